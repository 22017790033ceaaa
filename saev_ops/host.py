"""What this process may use of the machine it runs on: its CPUs, and the page cache it can count on.

A Slurm job (or a container) sees the whole node in ``os.cpu_count()`` and ``/proc/meminfo`` but may use only part
of it. :func:`usable_cpus` counts the CPUs the process may run on (its affinity mask, which Slurm's task affinity
and cgroup cpusets set). :func:`page_cache_room` is the room a dataset must fit in to stay cached across epochs.

A Slurm job (or a container) usually runs in a control group whose memory limit counts the page cache its reads fill:
a job with ``--mem=64G`` on a 512 GB node keeps at most ~64 GB of the files it reads cached, whatever the node has.
So the room is the smallest of

- ``MemAvailable`` of ``/proc/meminfo``: free memory plus what the kernel can reclaim (the page cache, including
  any pages of the dataset already cached), i.e. what the rest of the machine leaves; without it, physical memory;
- for each control group this process is in, and each group above it, with a memory limit (cgroup v2
  ``memory.max``, v1 ``memory.limit_in_bytes``): the limit less what the group holds that is not page cache
  (``memory.current`` less ``file`` of ``memory.stat``; v1: ``memory.usage_in_bytes`` less ``total_cache``).

Files that cannot be read (another platform, a container that hides them) are left out of the minimum; the result
is a snapshot, good for deciding how to read, never for correctness.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

_UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as the page counter's maximum, 0x7ffffffffffff000 here


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the platform has one (Linux), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class Room:
    bytes: int
    source: str
    """What set it, for logs: ``MemAvailable``, ``physical memory`` or the control group file."""


def page_cache_room(proc: pathlib.Path = pathlib.Path("/proc"),
                    cgroup_root: pathlib.Path = pathlib.Path("/sys/fs/cgroup")) -> Room:
    """The smallest of the machine's available memory and the room left under each memory limit on this process's
    control groups (``proc`` and ``cgroup_root`` name other trees for tests)."""
    rooms = [_machine(proc)]
    for v2, path in _cgroups(proc):
        for d in _ancestors(cgroup_root, v2, path):
            room = _cgroup_room(d, v2)
            if room is not None:
                rooms.append(room)
    return min(rooms, key=lambda r: r.bytes)


def _machine(proc: pathlib.Path) -> Room:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "MemAvailable":
                return Room(int(value.split()[0]) * 1024, "MemAvailable")
    except (OSError, ValueError, IndexError):
        pass
    try:
        return Room(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory")
    except (ValueError, OSError, AttributeError):
        return Room(_UNLIMITED, "unknown (no limit assumed)")


def _cgroups(proc: pathlib.Path) -> list[tuple[bool, str]]:
    """(is v2, path) of this process's memory control groups, from ``/proc/self/cgroup``."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            found.append((True, path))
        elif "memory" in controllers.split(","):
            found.append((False, path))
    return found


def _ancestors(root: pathlib.Path, v2: bool, path: str) -> list[pathlib.Path]:
    """The group's directory and those above it (a path the process sees but the tree lacks, as in a container with
    its own cgroup namespace, has none)."""
    mounts = [root, root / "unified"] if v2 else [root / "memory"]
    rel = pathlib.PurePosixPath(path.strip())
    if ".." in rel.parts:
        return []
    parts = [p for p in rel.parts if p != "/"]
    for mount in mounts:
        leaf = mount.joinpath(*parts)
        if leaf.is_dir():
            return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return []


def _cgroup_room(d: pathlib.Path, v2: bool) -> Room | None:
    limit_file, usage_file, cache_key = (("memory.max", "memory.current", "file") if v2 else
                                         ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_cache"))
    try:
        text = (d / limit_file).read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        limit = int(text)
    except ValueError:
        return None
    if limit >= _UNLIMITED:
        return None
    held = 0
    try:
        usage = int((d / usage_file).read_text().strip())
        stat = dict(line.split(maxsplit=1) for line in (d / "memory.stat").read_text().splitlines() if " " in line)
        held = max(0, usage - int(stat.get(cache_key, "0")))
    except (OSError, ValueError):
        pass
    return Room(max(0, limit - held), str(d / limit_file))

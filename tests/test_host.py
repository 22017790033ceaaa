"""What a process may use of its machine: its CPUs (affinity), and the page cache it can count on (available memory,
control groups' memory limits)."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
import subprocess
import sys

import pytest

from saev_ops import host
from saev_ops.loaders import ShuffledConfig, ShuffledDataLoader, sizing
from saev_ops.loaders import shuffled as shuffled_module
from tests.shard_helpers import write_dataset

GIB = 1 << 30


def fake_proc(tmp_path: pathlib.Path, cgroup: str, available_kb: int | None = 8 * 2**20) -> pathlib.Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    if available_kb is not None:
        (proc / "meminfo").write_text(f"MemTotal:       {2 * available_kb} kB\nMemFree:  12 kB\n"
                                      f"MemAvailable:   {available_kb} kB\nBuffers: 0 kB\n")
    return proc


def printed_fit(text: str) -> float:
    """The buffer_mb a warning says fits."""
    found = re.search(r"buffer_mb=([0-9.e+-]+) or less fits", text)
    assert found, text
    return float(found.group(1))


def group(root: pathlib.Path, rel: str, files: dict[str, str]) -> None:
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)


def test_without_control_group_limits_the_room_is_the_available_memory(tmp_path: pathlib.Path) -> None:
    proc = fake_proc(tmp_path, "0::/user.slice/session-1.scope\n")
    root = tmp_path / "cg"
    group(root, "user.slice/session-1.scope", {"memory.max": "max\n"})
    group(root, "user.slice", {"memory.max": "max\n"})
    assert host.page_cache_room(proc, root) == host.Room(8 * GIB, "MemAvailable")


def test_a_v2_limit_above_the_group_counts_less_what_the_group_holds_outside_the_page_cache(
        tmp_path: pathlib.Path) -> None:
    # a Slurm job step: the job's cgroup has --mem=4G and holds 3 GiB, 2 GiB of it page cache; the step has no limit
    proc = fake_proc(tmp_path, "0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n")
    root = tmp_path / "cg"
    job = "system.slice/slurmstepd.scope/job_7"
    group(root, job, {"memory.max": f"{4 * GIB}\n", "memory.current": f"{3 * GIB}\n",
                      "memory.stat": f"anon {GIB}\nfile {2 * GIB}\nkernel 0\n"})
    group(root, f"{job}/step_0/user/task_0", {"memory.max": "max\n", "memory.current": "0\n", "memory.stat": ""})
    room = host.page_cache_room(proc, root)
    assert room == host.Room(3 * GIB, str(root / job / "memory.max"))


def test_a_v1_memory_limit_and_the_no_limit_value(tmp_path: pathlib.Path) -> None:
    proc = fake_proc(tmp_path, "12:cpu,cpuacct:/slurm/uid_0/job_9\n4:memory:/slurm/uid_0/job_9/step_batch\n0::/\n")
    root = tmp_path / "cg"
    no_limit = "9223372036854771712\n"
    group(root, "memory", {"memory.limit_in_bytes": no_limit})
    group(root, "memory/slurm/uid_0/job_9", {"memory.limit_in_bytes": f"{2 * GIB}\n",
                                             "memory.usage_in_bytes": f"{GIB}\n",
                                             "memory.stat": f"cache {GIB // 2}\nrss 1\ntotal_cache {GIB // 2}\n"})
    group(root, "memory/slurm/uid_0/job_9/step_batch", {"memory.limit_in_bytes": no_limit})
    room = host.page_cache_room(proc, root)
    assert room == host.Room(2 * GIB - GIB // 2, str(root / "memory/slurm/uid_0/job_9/memory.limit_in_bytes"))


def test_the_smallest_room_wins_and_unreadable_files_are_left_out(tmp_path: pathlib.Path) -> None:
    # available memory below the group's limit; a group file that is not a number; a path the tree lacks
    proc = fake_proc(tmp_path, "0::/a/b\n5:memory:/not/in/this/tree\n", available_kb=2**20)
    root = tmp_path / "cg"
    group(root, "a/b", {"memory.max": "garbage\n"})
    group(root, "a", {"memory.max": f"{3 * GIB}\n"})  # no memory.current: nothing counted as held
    assert host.page_cache_room(proc, root) == host.Room(GIB, "MemAvailable")
    (proc / "meminfo").unlink()  # no /proc/meminfo (macOS): physical memory, then the group's limit is smaller
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    expect = host.Room(3 * GIB, str(root / "a" / "memory.max")) if physical > 3 * GIB else \
        host.Room(physical, "physical memory")
    assert host.page_cache_room(proc, root) == expect


def test_a_path_that_climbs_out_of_the_tree_is_ignored(tmp_path: pathlib.Path) -> None:
    proc = fake_proc(tmp_path, "0::/../../etc\n")
    root = tmp_path / "cg"
    group(root, "", {"memory.max": "1\n"})
    assert host.page_cache_room(proc, root).source == "MemAvailable"


def _v1_memory_group() -> pathlib.Path | None:
    """This process's v1 memory control group's directory, where a child can be made (root on a v1/hybrid host)."""
    try:
        lines = pathlib.Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = pathlib.Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return d if d.is_dir() and os.access(d, os.W_OK) else None
    return None


def test_a_real_v1_memory_limit_is_read_from_inside_the_group(tmp_path: pathlib.Path) -> None:
    """A child process moved into a new memory control group of 2 GiB sees the room under that limit."""
    parent = _v1_memory_group()
    if parent is None:
        pytest.skip("needs a writable cgroup v1 memory hierarchy (root on a v1 or hybrid host, as in CI)")
    d = parent / f"saev-ops-test-{os.getpid()}"
    d.mkdir()
    try:
        (d / "memory.limit_in_bytes").write_text(str(2 * GIB))
        script = ("import os, sys, pathlib\n"
                  "pathlib.Path(sys.argv[1], 'cgroup.procs').write_text(str(os.getpid()))\n"
                  "from saev_ops import host\n"
                  "room = host.page_cache_room()\n"
                  "print(room.bytes, room.source)\n")
        out = subprocess.run([sys.executable, "-c", script, str(d)], capture_output=True, text=True, check=True,
                             cwd=pathlib.Path(__file__).resolve().parents[1], timeout=120).stdout.split()
        assert out[1] == str(d / "memory.limit_in_bytes")
        assert 0 < int(out[0]) < 2 * GIB  # the limit less the child's own memory (the interpreter, numpy, torch)
    finally:
        d.rmdir()


def test_groups_are_released_by_default_only_when_the_data_exceed_the_room(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = write_dataset(tmp_path, n_examples=20)
    assert not ShuffledDataLoader(path).release_groups
    limit = "/sys/fs/cgroup/memory/slurm/uid_0/job_9/memory.limit_in_bytes"
    monkeypatch.setattr(shuffled_module.host, "page_cache_room", lambda: host.Room(1000, limit))
    with caplog.at_level(logging.INFO, logger="saev_ops.loaders.shuffled"):
        assert ShuffledDataLoader(path).release_groups
    assert "exceed the page cache this process can count on" in caplog.text and limit in caplog.text
    assert not ShuffledDataLoader(path, ShuffledConfig(release_groups=False)).release_groups


def test_a_buffer_larger_than_the_room_is_warned_of_with_one_that_fits(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = write_dataset(tmp_path, n_examples=40)
    cfg = ShuffledConfig(buffer_mb=0.05, read_mb=0.01, batch_size=16, n_threads=1)  # groups of 5 of the 40 examples
    loader = ShuffledDataLoader(path, cfg)
    three_groups = 3 * loader.blocks_per_group * loader.block_examples * loader.reader.layer_bytes
    assert loader.sizing.groups_bytes == three_groups < loader.n_rows * loader.reader.row_bytes
    needed = loader.sizing.groups_bytes + loader.sizing.own_bytes
    limit = "/sys/fs/cgroup/memory.max"
    with caplog.at_level(logging.WARNING, logger="saev_ops.loaders.shuffled"):
        room = host.Room(int(needed / sizing.ROOM_SHARE) + 1, limit)
        monkeypatch.setattr(shuffled_module.host, "page_cache_room", lambda: room)
        ShuffledDataLoader(path, cfg)
        assert caplog.text == ""  # fits within the share
        small = host.Room(int((loader.sizing.own_bytes + three_groups / 2) / sizing.ROOM_SHARE), limit)
        monkeypatch.setattr(shuffled_module.host, "page_cache_room", lambda: small)
        ShuffledDataLoader(path, cfg)
    assert "buffer_mb=0.05 needs" in caplog.text and limit in caplog.text
    fits = (sizing.ROOM_SHARE * small.bytes - loader.sizing.own_bytes) / three_groups * 0.05
    assert 0.999 * fits <= printed_fit(caplog.text) <= fits


def test_the_buffer_that_fits_scales_three_whole_groups_even_when_the_data_are_fewer(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # groups of 20 of the 40 examples: two groups hold all the data, three would hold 60 examples' bytes
    path = write_dataset(tmp_path, n_examples=40)
    cfg = ShuffledConfig(buffer_mb=0.12, read_mb=0.01, batch_size=16, n_threads=1)
    loader = ShuffledDataLoader(path, cfg)
    data_bytes = loader.n_rows * loader.reader.row_bytes  # the selected rows
    three_groups = 3 * loader.blocks_per_group * loader.block_examples * loader.reader.layer_bytes
    assert loader.group_examples == 20 and three_groups > data_bytes == loader.sizing.groups_bytes
    room = host.Room(int((loader.sizing.own_bytes + data_bytes / 2) / sizing.ROOM_SHARE), "here")
    monkeypatch.setattr(shuffled_module.host, "page_cache_room", lambda: room)
    with caplog.at_level(logging.WARNING, logger="saev_ops.loaders.shuffled"):
        ShuffledDataLoader(path, cfg)
    warned = caplog.text
    fits = (sizing.ROOM_SHARE * room.bytes - loader.sizing.own_bytes) / three_groups * 0.12
    assert 0.999 * fits <= printed_fit(caplog.text) <= fits
    caplog.clear()  # and that buffer does fit
    with caplog.at_level(logging.WARNING, logger="saev_ops.loaders.shuffled"):
        ShuffledDataLoader(path, dataclasses.replace(cfg, buffer_mb=printed_fit(warned)))
    assert caplog.text == ""


def test_usable_cpus_follow_the_affinity_mask_not_the_machine() -> None:
    """What a Slurm job bound to some CPUs sees: a child pinned to one CPU counts one (``os.cpu_count()``: all)."""
    script = "from saev_ops import host; from saev_ops.loaders import ShuffledConfig; " \
             "print(host.usable_cpus(), ShuffledConfig().n_threads)"
    first = sorted(os.sched_getaffinity(0))[0]
    out = subprocess.run(["taskset", "-c", str(first), sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=pathlib.Path(__file__).resolve().parents[1], timeout=120).stdout.split()
    assert out == ["1", "1"]
    assert host.usable_cpus() == len(os.sched_getaffinity(0))

"""Which file system holds a path, from the mount table: SQLite's locking is unreliable on network file systems
(NFS, Lustre, GPFS, ...), where many Slurm jobs writing one registry file can corrupt it or see "database is locked"
for minutes. No torch, no third-party imports."""

from __future__ import annotations

import logging
import os
import pathlib

log = logging.getLogger(__name__)
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph",
                                 "fuse.ceph-fuse", "glusterfs", "fuse.glusterfs", "fuse.sshfs", "panfs", "wekafs",
                                 "afs", "9p"})
MOUNTS = pathlib.Path("/proc/mounts")


def filesystem_of(path: str | os.PathLike[str], mounts: str | None = None) -> tuple[str, str] | None:
    """(mount point, file system type) of the mount holding ``path`` (the longest mount point above it), from
    ``mounts`` (``/proc/mounts`` text; read when None). None when the table cannot be read."""
    if mounts is None:
        try:
            mounts = MOUNTS.read_text()
        except OSError:
            return None
    target = os.path.realpath(os.path.abspath(path))
    best: tuple[str, str] | None = None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, parts[2])
    return best


def warn_if_network(path: str | os.PathLike[str], mounts: str | None = None) -> bool:
    """Log a warning recommending PostgreSQL when the SQLite file ``path`` lies on a network file system. Returns
    whether it warned."""
    found = filesystem_of(pathlib.Path(path).parent, mounts)
    if found is None or found[1] not in NETWORK_FILESYSTEMS:
        return False
    log.warning("the SQLite registry %s is on a network file system (%s at %s): SQLite's file locks are not "
                "reliable there, and many jobs writing it can corrupt it or wait minutes on locks; use PostgreSQL "
                "(--db / SAEV_OPS_DB_URL=postgresql://user@host/db) for jobs on several machines", path, found[1],
                found[0])
    return True

"""Datasets as the registry sees them: import, verify, remove, and the checks every job runs before it starts.

This module joins :mod:`saev_ops.shards` (files) and :mod:`saev_ops.registry` (rows); neither of those knows the other.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
from typing import Any

from saev_ops import errors
from saev_ops.registry import DatasetRecord, Registry
from saev_ops.shards.format import Metadata, ShardPaths, TokenLayout, read_json
from saev_ops.shards.importer import import_saev_dir
from saev_ops.shards.verify import Problem, verify
from saev_ops.split import Parts


@dataclasses.dataclass(frozen=True)
class _Place:
    """Where a directory is, two ways: its resolved path, and its device and inode (the same directory reached through
    a link, a bind mount or another spelling of the path)."""

    path: pathlib.Path
    inode: tuple[int, int] | None

    @classmethod
    def of(cls, path: str | pathlib.Path) -> _Place:
        p = pathlib.Path(path)
        try:
            st = p.stat()
        except OSError:
            return cls(p.resolve(), None)
        return cls(p.resolve(), (st.st_dev, st.st_ino))

    def overlaps(self, other: _Place) -> bool:
        """The same directory, or one inside the other (deleting either would delete files of the other)."""
        if self.inode is not None and self.inode == other.inode:
            return True
        return self.path.is_relative_to(other.path) or other.path.is_relative_to(self.path)


def datasets_at(registry: Registry, path: str | pathlib.Path, *, besides: str | None = None) -> list[DatasetRecord]:
    """The registered datasets (other than ``besides``) whose directory is ``path``, by resolved path or by device and
    inode, or lies inside it or holds it: a directory belongs to at most one dataset row."""
    place = _Place.of(path)
    return [d for d in registry.list_datasets() if d.name != besides and _Place.of(d.path).overlaps(place)]


def _owners(records: list[DatasetRecord]) -> str:
    return ", ".join(f"{d.name!r} ({d.path})" for d in records)


def register_writing(registry: Registry, name: str, path: pathlib.Path, md: Metadata, layout: TokenLayout, *,
                     source_path: str | None, extra: dict[str, Any], content_hash: str | None = None) -> DatasetRecord:
    """Register a dataset about to be written (status ``writing``), or return the existing row of the same content
    (a resumed write). A finished dataset of the same content is returned as is.

    ``content_hash`` is the dataset's identity in the registry: the metadata hash for imports, the hash of the
    recording spec (images, model, weights, layers, tokens, dtype) for recordings, known before any work is done.
    """
    content_hash = content_hash or md.content_hash
    existing = registry.find_dataset_by_hash(content_hash)
    if existing is not None:
        return existing
    return registry.create_dataset(
        name=name, content_hash=content_hash, path=str(path), model_family=md.family, model_ckpt=md.ckpt,
        layers=list(md.layers), d_model=md.d_model, tokens_per_example=md.tokens_per_example,
        n_examples=md.n_examples, dtype=md.dtype, source_path=source_path, status="writing",
        extra={"token_layout": vars(layout), "metadata_hash": md.content_hash, **extra},
    )


def mark_complete(registry: Registry, name: str, sidecar: dict[str, Any], *, path: pathlib.Path | None = None,
                  md: Metadata | None = None, extra: dict[str, Any] | None = None) -> DatasetRecord:
    """Flip a dataset to ``complete`` (after every file is on disk) and record its statistics; ``path``/``md`` give
    its final place and metadata when they changed while writing."""
    record = registry.get_dataset(name)
    new_extra = {**record.extra, **(extra or {}), "stats": sidecar["stats"], "metadata_hash": sidecar["content_hash"]}
    new_extra.pop("error", None)  # an earlier attempt's failure: this one succeeded
    fields: dict[str, Any] = {"status": "complete", "extra": new_extra}
    if path is not None:
        fields["path"] = str(path)
    if md is not None:
        fields["n_examples"] = md.n_examples
    return registry.update_dataset(name, **fields)


def split_progress(record: DatasetRecord) -> str | None:
    """For a recording split across jobs and still being written: which parts are done (None otherwise)."""

    if record.status == "complete":
        return None
    parts = Parts(ShardPaths(pathlib.Path(record.path)).parts)
    try:
        n = len(parts.read_plan(str(record.extra.get("metadata_hash", ""))))
    except errors.DataError:
        return None
    todo = parts.unfinished(n)
    shown = ", ".join(map(str, todo[:10])) + (", ..." if len(todo) > 10 else "")
    return f"{n - len(todo)} of {n} done" + (f" (unfinished: {shown})" if todo else "; joining")


def import_dataset(registry: Registry, path: pathlib.Path, name: str, *, registers: int | None = None) -> DatasetRecord:
    """Register an existing saev shard directory: build the index (image paths and labels where saev's fields give
    them), checksums and statistics, then mark it complete. A copy of a saev-ops dataset is verified against its own
    checksums instead, and keeps its index and provenance. ``registers``: register tokens at the start of each
    example's content tokens."""

    path = pathlib.Path(path).resolve()
    owners = datasets_at(registry, path)
    if owners:
        raise errors.DuplicateError(f"{path} is already registered as dataset {_owners(owners)}: a directory belongs "
                                    f"to one dataset (nothing was registered as {name!r})")
    md = Metadata.from_json_dict(read_json(path / "metadata.json"), source=str(path / "metadata.json"))
    existing = registry.find_dataset_by_hash(md.content_hash)
    if existing is not None:
        raise errors.DuplicateError(f"{path} is already registered as dataset {existing.name!r} ({existing.path})")
    try:
        registry.get_dataset(name)
    except errors.NotFoundError:
        pass
    else:
        raise errors.DuplicateError(f"a dataset named {name!r} already exists; choose another --name")
    sidecar = import_saev_dir(path, registers=registers)
    layout = TokenLayout.from_json_dict(sidecar["token_layout"])
    origin = sidecar.get("extra") or {}
    extra: dict[str, Any] = {"imported_from_saev": bool(origin.get("imported_from_saev", True))}
    if "provenance" in origin:  # a copy of a saev-ops recording keeps what it was recorded from
        extra["provenance"] = origin["provenance"]
    if origin.get("image_paths_missing"):
        extra["image_paths_missing"] = origin["image_paths_missing"]
    register_writing(registry, name, path, md, layout, source_path=md.dataset or None, extra=extra)
    return mark_complete(registry, name, sidecar)


def verify_dataset(registry: Registry, name: str, *, full: bool = False) -> tuple[DatasetRecord, list[Problem]]:
    record = registry.get_dataset(name)
    problems = []
    if record.status != "complete":
        problems.append(Problem(f"registry dataset {name!r}", "status complete", f"status {record.status}"))
    problems += verify(pathlib.Path(record.path), full=full)
    sharing = datasets_at(registry, record.path, besides=name)
    if sharing:
        problems.append(Problem(record.path, "a directory of this dataset's own",
                                f"the directory of dataset {_owners(sharing)} too (one recording's files replaced "
                                "the other's: record the other again, or remove one row)"))
    if not problems:
        md = Metadata.from_json_dict(read_json(pathlib.Path(record.path) / "metadata.json"))
        want = record.extra.get("metadata_hash", record.content_hash)
        if md.content_hash != want:
            problems.append(Problem(str(pathlib.Path(record.path) / "metadata.json"),
                                    f"metadata hash {want[:12]}... (registry)",
                                    f"{md.content_hash[:12]}... (a different dataset is at this path)"))
    return record, problems


def require_complete(registry: Registry, name: str) -> DatasetRecord:
    """Fail fast, before a job starts, when a dataset is missing, incomplete or damaged (quick checks, no checksums)."""
    record, problems = verify_dataset(registry, name, full=False)
    if problems:
        lines = "\n  ".join(str(p) for p in problems)
        raise errors.DataError(f"dataset {name!r} at {record.path} is not usable:\n  {lines}\n"
                               f"(`saev-ops datasets verify {name}` re-checks it)")
    return record


def remove_dataset(registry: Registry, name: str, *, force: bool = False, delete_files: bool = False) -> int:
    """Remove a dataset from the registry (and its directory with ``delete_files``). Refuses while runs or outputs
    depend on it unless ``force``, and deleting files that another dataset's directory holds (then nothing is removed).
    Returns the number of dependent runs removed."""
    record = registry.get_dataset(name)
    if delete_files:
        sharing = datasets_at(registry, record.path, besides=name)
        if sharing:
            raise errors.HasDependentsError(
                f"{record.path} holds the files of dataset {_owners(sharing)} as well; nothing was removed (leave out "
                f"--delete-files to remove only the row {name!r})")
    removed = registry.delete_dataset(name, force=force)
    if delete_files:
        shutil.rmtree(record.path, ignore_errors=True)
    return removed

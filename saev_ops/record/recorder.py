"""The recording loop: images -> model -> ShardWriter, registered in the registry with full provenance.

Decoding runs in a thread pool a few batches ahead of the model (Pillow releases the GIL), so the model is the slowest
stage. Bad images (unreadable, truncated, odd modes) are skipped and listed, or fail the run with ``strict``.
An interrupted recording (Ctrl-C, a killed job) leaves its finished shards; running the same recording again resumes
after the last finished shard. The dataset is ``complete`` only at the very end.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import json
import logging
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from saev_ops import __version__, atomic, datasets, errors
from saev_ops.paths import job_logs_root
from saev_ops.progress import Progress
from saev_ops.record.images import open_images
from saev_ops.record.preprocess import PIXEL_AGGS, patch_majority
from saev_ops.registry import DatasetRecord, Registry
from saev_ops.settings import default_data_root
from saev_ops.shards import ShardWriter, dtypes
from saev_ops.shards.format import (
    DEFAULT_MAX_TOKENS_PER_SHARD,
    Metadata,
    ShardPaths,
    TokenLayout,
    dataset_dir,
    encode_data_field,
    read_json,
)
from saev_ops.shards.index import IndexReader
from saev_ops.split import Parts, split_ranges
from saev_ops.tokens import RECORDABLE

log = logging.getLogger(__name__)
# saev's metadata.json names one of its own families (it reloads the model by it); the nearest one for each of ours.
SAEV_FAMILY = {"builtin": "fake-clip", "vit": "clip", "clip": "clip", "dinov2": "dinov2", "siglip": "siglip",
               "dinov3": "dinov3", "siglip2": "siglip", "timm": "clip", "open_clip": "clip"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecordSpec:
    """What to record. Also the job spec a Slurm job receives (plain, picklable)."""

    name: str
    """Registry name of the dataset."""
    images: str
    """Image folder (class sub-folders = labels) or a file list (PATH or PATH<TAB>CLASS per line)."""
    model: str
    """FAMILY:CHECKPOINT, e.g. builtin:tiny, vit:/models/vit-b16."""
    masks: str | None = None
    """Segmentation masks (ADE20K-style: one class id per pixel, a PNG per image at the image's path relative to
    ``images``, under this folder): each patch gets its class in saev's labels.bin, by ``pixel_agg``."""
    pixel_agg: str = "majority"
    """With ``masks``: how a patch's pixels' classes become its label, by saev's names: ``majority`` (the most common
    class) or ``prefer-fg`` (the most common class other than the background, 0, whenever the patch has any)."""
    layers: tuple[int, ...] = (-1,)
    """Blocks whose output is recorded (0-based; -1 = last)."""
    tokens: str = "cls+patches"
    """cls+patches (saev's layout: CLS if the model has one, then patches; registers dropped), patches, cls, or all
    (CLS, registers, patches: saev-ops reads it right, saev reads the register rows as patches)."""
    resolution: int | None = None
    """Image side in pixels for the transformers families, overriding the image processor's size (a multiple of the
    patch size; tokens per image follow)."""
    dtype: str = "float32"
    """Storage precision: float32 (saev-compatible), float16 or bfloat16."""
    batch_size: int = 32
    device: str = "cpu"
    n_workers: int = 4
    """Decoding threads."""
    max_tokens_per_shard: int = DEFAULT_MAX_TOKENS_PER_SHARD
    data_root: str | None = None
    """Where datasets go (default $SAEV_OPS_HOME/data)."""
    strict: bool = False
    """Fail on the first bad image instead of skipping it."""
    force: bool = False
    """Record again even if the same recording exists."""

    def __post_init__(self) -> None:
        problems = []
        if self.tokens not in RECORDABLE:
            problems.append(f"--tokens must be one of {', '.join(RECORDABLE)}, got {self.tokens!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            problems.append(f"--dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.resolution is not None and self.resolution <= 0:
            problems.append(f"--resolution must be > 0, got {self.resolution}")
        if self.batch_size <= 0 or self.n_workers <= 0:
            problems.append("--batch-size and --workers must be > 0")
        if not self.layers:
            problems.append("--layers must name at least one layer")
        if self.pixel_agg not in PIXEL_AGGS:
            problems.append(f"--pixel-agg must be one of {', '.join(PIXEL_AGGS)}, got {self.pixel_agg!r}")
        elif self.pixel_agg != "majority" and self.masks is None:
            problems.append("--pixel-agg applies to --masks; give the masks or leave it out")
        if problems:
            raise errors.ConfigError("; ".join(problems))


@dataclasses.dataclass
class Timings:
    decode_s: float = 0.0
    model_s: float = 0.0
    write_s: float = 0.0
    wait_s: float = 0.0
    images: int = 0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def stored_layout(model_layout: TokenLayout, tokens: str) -> TokenLayout:
    """The token axis a recording with ``--tokens tokens`` stores, from the model's."""
    if tokens == "all":
        if model_layout.n_registers:
            log.warning("--tokens all keeps this model's %d register tokens: saev-ops reads them as registers, but "
                        "saev's loaders read them as patches (saev's layout is CLS + patches: --tokens cls+patches)",
                        model_layout.n_registers)
        return model_layout
    if tokens == "cls+patches":
        return TokenLayout(n_cls=model_layout.n_cls, n_registers=0, n_patches=model_layout.n_patches)
    if tokens == "patches":
        return TokenLayout(n_cls=0, n_registers=0, n_patches=model_layout.n_patches)
    if model_layout.n_cls == 0:
        raise errors.ConfigError("--tokens cls: this model has no CLS token")
    return TokenLayout(n_cls=1, n_registers=0, n_patches=0)


def identity_tokens(model_layout: TokenLayout, tokens: str) -> str:
    """The --tokens value in a recording's identity: the choice that stores this layout, named as recordings made
    before cls+patches existed named it ("all" for a model without registers), so their identities hold."""
    return "all" if tokens == "cls+patches" and model_layout.n_registers == 0 else tokens


@dataclasses.dataclass
class _Recording:
    """A recording resolved against the registry: what every job of it (one, or the parts of a split one) needs."""

    spec: RecordSpec
    images: Any
    adapter: Any
    layers: list[int]
    layout: TokenLayout
    masks: MaskSource | None
    md: Metadata
    """The planned metadata (every image readable)."""
    partial: pathlib.Path
    data_root: pathlib.Path
    provenance: dict[str, Any]

    @property
    def parts(self) -> Parts:
        return Parts(ShardPaths(self.partial).parts)


def _resolve(registry: Registry, spec: RecordSpec, *, register: bool) -> _Recording | DatasetRecord:
    """Load the model, compute the recording's identity and find it in the registry: the finished dataset when there
    is one (and not ``force``), else the recording to do. ``register``: register it (status ``writing``; a failed
    one starts a new attempt) when it is not registered; a job of a split recording registers only a missing row."""
    from saev_ops.record.models import describe, load_model

    images = open_images(spec.images)
    adapter = load_model(spec.model, spec.device, spec.resolution)
    layers = adapter.resolve_layers(list(spec.layers))
    layout = stored_layout(adapter.layout, spec.tokens)
    model_info = describe(adapter)
    masks = _mask_source(spec, images, adapter, layout)
    identity = {"images": images.list_hash, "n_images": len(images.items), "model": model_info["resolved"],
                "weights": model_info["weights_sha256"], "layers": layers,
                "tokens": identity_tokens(adapter.layout, spec.tokens), "dtype": spec.dtype,
                "preprocess": model_info["preprocess"], "max_tokens_per_shard": spec.max_tokens_per_shard,
                "format": 1, **({"masks": masks.describe()} if masks is not None else {})}
    spec_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    existing = registry.find_dataset_by_hash(spec_hash)
    if existing is not None and existing.name != spec.name:
        raise errors.DuplicateError(f"this exact recording is registered as dataset {existing.name!r}; use that name "
                                    f"(nothing was registered as {spec.name!r})")
    if existing is not None and existing.status == "complete" and (not spec.force or not register):
        n_bad = int(existing.extra.get("n_bad_images", 0) or 0)
        if spec.strict and n_bad:
            raise errors.DataError(f"dataset {existing.name!r} was recorded skipping {n_bad} unreadable image(s) "
                                   f"(`saev-ops datasets show {existing.name}` lists them); --strict refuses it: fix "
                                   "the images, or record again with --force")
        return existing
    if register and existing is not None and spec.force and existing.status == "complete":
        datasets.remove_dataset(registry, existing.name, force=False, delete_files=True)
        existing = None
    if existing is None:
        with contextlib.suppress(errors.NotFoundError):
            other = registry.get_dataset(spec.name)
            raise errors.DuplicateError(f"a different dataset is already named {spec.name!r} ({other.path}); choose "
                                        "another --name or remove it with `saev-ops datasets rm`")
    elif register and existing.status == "failed":
        registry.update_dataset(existing.name, status="writing")  # a new attempt at a recording that failed

    data_root = pathlib.Path(spec.data_root) if spec.data_root else default_data_root()
    partial = data_root / "saev" / "shards" / f".partial-{spec_hash[:16]}"
    family = SAEV_FAMILY[adapter.family]
    md = Metadata(family=family, ckpt=spec.model, layers=tuple(layers),
                  content_tokens_per_example=layout.n_registers + layout.n_patches, cls_token=layout.n_cls == 1,
                  d_model=adapter.d_model, n_examples=len(images.items),
                  max_tokens_per_shard=max(spec.max_tokens_per_shard, layout.n_tokens * len(layers)),
                  data=encode_data_field({**images.describe(), "recording_hash": spec_hash}), dataset=images.root,
                  pixel_agg=spec.pixel_agg, dtype=spec.dtype)
    md = _resumed_metadata(partial, md, images.describe())
    provenance = {"images": images.describe(), "model": model_info, "tokens": spec.tokens,
                  "resolution": spec.resolution,  # what `saev-ops eval` loads the model at again
                  **({"masks": masks.describe()} if masks is not None else {}),
                  "saev_ops_version": __version__, "recording_hash": spec_hash}
    if existing is None:
        try:
            datasets.register_writing(registry, spec.name, partial, md, layout, source_path=images.root,
                                      extra={"provenance": provenance}, content_hash=spec_hash)
        except errors.DuplicateError:
            if registry.find_dataset_by_hash(spec_hash) is None:  # not a job of the same recording, first by a hair
                raise
    return _Recording(spec, images, adapter, layers, layout, masks, md, partial, data_root, provenance)


def _resumed_metadata(partial: pathlib.Path, md: Metadata, source: dict[str, Any]) -> Metadata:
    """The metadata of an unfinished write in ``partial`` begun before the recording's hash entered saev's ``data``
    field (so that two recordings whose bytes differ never share a directory): that write resumes as it began."""
    progress = ShardPaths(partial).progress
    if not progress.exists():
        return md
    legacy = dataclasses.replace(md, data=encode_data_field(source))
    with contextlib.suppress(errors.DataError):
        if read_json(progress).get("content_hash") == legacy.content_hash:
            return legacy
    return md


def record_dataset(registry: Registry, spec: RecordSpec, *,
                   progress: Callable[[int, int, Timings], None] | None = None) -> DatasetRecord:
    """Record ``spec`` into a registered dataset and return it (an existing identical one, unless ``force``)."""

    rec = _resolve(registry, spec, register=True)
    if isinstance(rec, DatasetRecord):
        return rec
    writer = ShardWriter(rec.partial, rec.md, rec.layout, extra={"provenance": rec.provenance})
    with _failure_recorded(registry, spec.name, writer):
        bad, timings = _record_range(rec, writer, 0, len(rec.images.items), progress)
        _require_images(rec, writer.n_written, bad)
        sidecar = writer.finalize(n_examples=writer.n_written)
    return _publish(registry, rec, writer, sidecar, bad, timings.as_dict())


def _require_images(rec: _Recording, n_written: int, bad: list[dict[str, str]]) -> None:
    if n_written == 0:
        first = bad[0]["error"] if bad else ""
        raise errors.DataError(f"{rec.images.root}: no readable images ({len(bad)} bad: {first})")


def _record_range(rec: _Recording, writer: Any, lo: int, hi: int,
                  progress: Callable[[int, int, Timings], None] | None) -> tuple[list[dict[str, str]], Timings]:
    """Record images ``[lo, hi)`` through ``writer``, after what it already holds (a resumed write). Returns the bad
    images (path, error) and the time spent."""
    import torch

    spec = rec.spec
    items = rec.images.items[lo:hi]
    done_paths = set(writer.written_paths())
    start = 0
    if writer.resume_from:
        start = max(i for i, it in enumerate(items) if it.path in done_paths) + 1
    bad: list[dict[str, str]] = [{"path": it.path, "error": "skipped in an earlier attempt"}
                                 for it in items[:start] if it.path not in done_paths]
    timings = Timings()
    token_idx = np.asarray(rec.adapter.layout.indices(spec.tokens))
    use_cuda = torch.device(spec.device).type == "cuda"
    masks, adapter = rec.masks, rec.adapter
    load = masks.load if masks is not None else (lambda path: (adapter.preprocess(path), None))
    for batch_items, pixels, patch_labels, errors_ in _decoded_batches(items[start:], load, spec, timings):
        for it, err in errors_:
            if spec.strict:
                raise errors.DataError(f"{it.path}: cannot read image ({err}); drop --strict to skip bad images")
            bad.append({"path": it.path, "error": err})
        if not batch_items:
            continue
        t0 = time.perf_counter()
        x = torch.from_numpy(pixels)
        with torch.inference_mode():
            if use_cuda:
                x = x.pin_memory().to(spec.device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    hidden = adapter.hidden_states(x, rec.layers)
            else:
                hidden = adapter.hidden_states(x, rec.layers)
            acts = hidden[:, :, token_idx].float().cpu().numpy()
        t1 = time.perf_counter()
        writer.write(acts, [(it.path, it.label, it.label_name) for it in batch_items], patch_labels)
        timings.model_s += t1 - t0
        timings.write_s += time.perf_counter() - t1
        timings.images += len(batch_items)
        if progress is not None:
            progress(start + timings.images + len(bad), len(items), timings)
    return bad, timings


@contextlib.contextmanager
def _failure_recorded(registry: Registry, name: str, writer: Any, what: str = "") -> Iterator[None]:
    """On an error the writer is closed (finished shards stay, to resume) and the dataset marked ``failed`` with the
    error; an interrupt leaves it ``writing``, to resume."""
    try:
        yield
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if isinstance(exc, Exception):
            try:
                _mark_failed(registry, name, f"{what}{type(exc).__name__}: {exc}"[:4000])
            except errors.SaevOpsError as inner:
                log.warning("dataset %r: could not record its failure in the registry: %s", name, inner)
        raise


def _mark_failed(registry: Registry, name: str, error: str) -> None:
    """Mark the dataset ``failed``, keeping its extra fields, with ``error`` as what went wrong."""
    registry.update_dataset(name, status="failed", extra={**registry.get_dataset(name).extra, "error": error})


def _publish(registry: Registry, rec: _Recording, writer: Any, sidecar: dict[str, Any], bad: list[dict[str, str]],
             timings: dict[str, Any]) -> DatasetRecord:
    """Move the finished directory to saev's place and mark the dataset complete."""
    final = dataset_dir(rec.data_root, writer.md.hash)
    owners = datasets.datasets_at(registry, final, besides=rec.spec.name)
    if owners:  # only an 8-character hash collision (or a row pointed here by hand) gets this far
        msg = (f"{final} is the directory of dataset {owners[0].name!r}: a recording never replaces another dataset's "
               f"files; {rec.spec.name!r} stays in {rec.partial} (record it with another --data-root)")
        _mark_failed(registry, rec.spec.name, msg)
        raise errors.DataError(msg)
    atomic.replace_dir(rec.partial, final)  # over a leftover of an earlier, unregistered attempt at the same content
    extra = {"bad_images": bad, "n_bad_images": len(bad), "timings": timings, "provenance": rec.provenance}
    return datasets.mark_complete(registry, rec.spec.name, sidecar, path=final, md=writer.md, extra=extra)


# -- a recording split across jobs ------------------------------------------------------------------------------------
def plan_split(registry: Registry, spec: RecordSpec, n_jobs: int) -> tuple[_Recording | DatasetRecord, list[int]]:
    """Register the recording and split its images into at most ``n_jobs`` ranges aligned to shards (so no two jobs
    write one file). Returns the recording (or the finished dataset) and the parts still to record: all of them the
    first time, the unfinished ones on a rerun (finished parts are kept, whatever ``n_jobs`` says now)."""
    rec = _resolve(registry, spec, register=True)
    if isinstance(rec, DatasetRecord):
        return rec, []
    parts = rec.parts
    ranges = parts.plan(rec.md.content_hash, split_ranges(rec.md.n_examples, rec.md.examples_per_shard, n_jobs))
    parts.clear_claim()
    return rec, parts.unfinished(len(ranges))


def record_split(registry: Registry, db_url: str, spec: RecordSpec, n_jobs: int) -> DatasetRecord:
    """Record ``spec`` as ``n_jobs`` parts at once, one process each on this machine, and join them: the same dataset,
    byte for byte, as :func:`record_dataset`. Rerun after a failure: only unfinished parts are recorded again."""
    from saev_ops.jobs import run_in_processes
    from saev_ops.record.jobs import RecordPartJob

    rec, todo = plan_split(registry, spec, n_jobs)
    if isinstance(rec, DatasetRecord):
        return rec
    if not todo:  # every part was finished, the join was not
        return _join_unclaimed(registry, rec)
    run_in_processes(f"recording {spec.name}", [RecordPartJob(db_url, spec, i, n_jobs) for i in todo])
    d = registry.get_dataset(spec.name)
    if d.status != "complete":
        raise errors.JobFailedError(f"dataset {spec.name!r}: every part finished but it is {d.status} "
                                    f"({d.extra.get('error', 'no error recorded')})")
    return d


def submit_split(registry: Registry, db_url: str, spec: RecordSpec, n_jobs: int,
                 slurm: Any) -> list[tuple[str | None, int | None]] | DatasetRecord:
    """Submit the unfinished parts of ``spec`` split into ``n_jobs`` as a Slurm array (the last part to finish joins
    them); returns (job id, array index) per part submitted, or the dataset when nothing is left to do."""
    from saev_ops.jobs import submit
    from saev_ops.record.jobs import RecordPartJob

    rec, todo = plan_split(registry, spec, n_jobs)
    if isinstance(rec, DatasetRecord):
        return rec
    if not todo:
        return _join_unclaimed(registry, rec)
    return submit("slurm", job_logs_root("record"), f"record-{spec.name}",
                  [RecordPartJob(db_url, spec, i, n_jobs) for i in todo], slurm)


def _join_unclaimed(registry: Registry, rec: _Recording) -> DatasetRecord:
    n_tasks = len(rec.parts.read_plan(rec.md.content_hash))
    if not rec.parts.claim_finish(n_tasks):
        raise errors.JobFailedError(f"{rec.parts.root}: every part is done but another job holds the final step")
    return _join_claimed(registry, rec, n_tasks)


def _join_claimed(registry: Registry, rec: _Recording, n_tasks: int) -> DatasetRecord:
    try:
        return _join_parts(registry, rec, n_tasks)
    except BaseException:
        rec.parts.clear_claim()  # a rerun of any part (or the submission) joins them again
        raise


def record_part(registry: Registry, spec: RecordSpec, task: int, n_jobs: int, *,
                progress: Callable[[int, int, Timings], None] | None = None) -> DatasetRecord | None:
    """Record part ``task`` of the recording split into ``n_jobs`` (the split of the first submission is kept) into
    its own folder; the job that finishes the last part joins them (:func:`_join_parts`) and returns the complete
    dataset, the others return None. A finished part is not recorded again; an interrupted one resumes."""

    rec = _resolve(registry, spec, register=False)
    if isinstance(rec, DatasetRecord):
        return rec
    parts = rec.parts
    ranges = parts.plan(rec.md.content_hash, split_ranges(rec.md.n_examples, rec.md.examples_per_shard, n_jobs))
    if not 0 <= task < len(ranges):
        raise errors.ConfigError(f"--task {task}: this recording is split into {len(ranges)} parts "
                                 f"(0-{len(ranges) - 1})")
    if parts.done(task) is None:
        lo, hi = ranges[task]
        md = dataclasses.replace(rec.md, n_examples=hi - lo)
        writer = ShardWriter(parts.part_dir(task), md, rec.layout)
        with _failure_recorded(registry, spec.name, writer, f"part {task} (images {lo}-{hi - 1}): "):
            bad, timings = _record_range(rec, writer, lo, hi, progress)
            shards = writer.seal()
            parts.mark_done(task, {"n_written": writer.n_written, "shards": shards, "bad_images": bad,
                                   "timings": timings.as_dict()})
        log.info("dataset %r: part %d of %d done (images %d-%d, %d skipped)", spec.name, task, len(ranges), lo,
                 hi - 1, len(bad))
    if not parts.claim_finish(len(ranges)):
        return None
    return _join_claimed(registry, rec, len(ranges))


def _join_parts(registry: Registry, rec: _Recording, n_tasks: int) -> DatasetRecord:
    """The final step: the parts' shards become the dataset's (hard links; once a part skipped images, the shards
    after it are re-packed so examples stay contiguous, as one job lays them out), then the index, saev's files,
    statistics and checksums are written and the dataset is marked complete."""

    parts = rec.parts
    with _failure_recorded(registry, rec.spec.name, None, "joining the parts: "):
        for leftover in rec.partial.iterdir():  # an earlier, interrupted join: start it again from the parts
            if leftover != parts.root:
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        writer = ShardWriter(rec.partial, rec.md, rec.layout, extra={"provenance": rec.provenance})
        infos = [parts.done(i) or {} for i in range(n_tasks)]
        disk = dtypes.disk_dtype(rec.md.dtype)
        shape = (rec.md.n_layers, rec.md.tokens_per_example, rec.md.d_model)
        n_total = sum(int(info["n_written"]) for info in infos)
        bad = [b for info in infos for b in info["bad_images"]]
        _require_images(rec, n_total, bad)
        for task, info in enumerate(infos):
            part = ShardPaths(parts.part_dir(task))
            index = IndexReader(part.index) if info["shards"] else None
            try:
                first = 0
                for s in info["shards"]:
                    n = int(s["n_examples"])
                    entries = [index.get(first + j) for j in range(n)] if index is not None else []
                    labels = part.patch_labels_part(s["shard"]) if s.get("patch_labels") else None
                    full = n == rec.md.examples_per_shard or writer.n_written + n == n_total
                    if full and writer.n_written % rec.md.examples_per_shard == 0:
                        writer.adopt(part.shard(s["shard"]), s, entries, labels)
                    else:  # after a part that skipped images: move the examples up
                        acts = np.fromfile(part.shard(s["shard"]), dtype=disk, count=n * int(np.prod(shape)))
                        writer.write(dtypes.decode(acts, rec.md.dtype).reshape(n, *shape),
                                     [(e.path, e.label, e.label_name) for e in entries],
                                     np.load(labels) if labels is not None else None)
                    first += n
            finally:
                if index is not None:
                    index.close()
        sidecar = writer.finalize(n_examples=n_total)
        parts.remove()
    timings: dict[str, float] = {}
    for info in infos:
        for k, v in info["timings"].items():
            timings[k] = timings.get(k, 0) + v
    return _publish(registry, rec, writer, sidecar, bad, {**timings, "parts": n_tasks})


def _decoded_batches(items: tuple[Any, ...], load: Callable[[str], tuple[np.ndarray, np.ndarray | None]],
                     spec: RecordSpec, timings: Timings
                     ) -> Iterator[tuple[list[Any], np.ndarray, np.ndarray | None, list[tuple[Any, str]]]]:
    """Batches of (good items, pixels (B, 3, H, W), patch labels (B, patches) or None, [(bad item, error)]), decoded
    ahead by a thread pool."""

    def decode(it: Any) -> tuple[Any, tuple[np.ndarray, np.ndarray | None] | None, str | None]:
        t0 = time.perf_counter()
        try:
            return it, load(it.path), None
        except Exception as exc:  # any decoding failure makes a bad image, reported by path
            return it, None, f"{type(exc).__name__}: {exc}"
        finally:
            timings.decode_s += time.perf_counter() - t0

    batches = [items[i : i + spec.batch_size] for i in range(0, len(items), spec.batch_size)]
    with cf.ThreadPoolExecutor(spec.n_workers, thread_name_prefix="saev-decode") as pool:
        pending: collections.deque[list[cf.Future[Any]]] = collections.deque()
        it = iter(batches)
        for b in it:
            pending.append([pool.submit(decode, x) for x in b])
            if len(pending) >= 3:
                break
        while pending:
            futs = pending.popleft()
            t0 = time.perf_counter()
            results = [f.result() for f in futs]
            timings.wait_s += time.perf_counter() - t0
            nxt = next(it, None)
            if nxt is not None:
                pending.append([pool.submit(decode, x) for x in nxt])
            good = [(i, out) for i, out, err in results if out is not None]
            bad = [(i, err) for i, out, err in results if out is None]
            pixels = np.stack([o[0] for _, o in good]) if good else np.empty((0,), np.float32)
            labels = np.stack([o[1] for _, o in good]) if good and good[0][1][1] is not None else None
            yield [i for i, _ in good], pixels, labels, bad


@dataclasses.dataclass(frozen=True)
class MaskSource:
    """Where each image's segmentation mask is, and how it becomes patch labels."""

    images_root: pathlib.Path
    masks_root: pathlib.Path
    preprocess: Any
    grid: tuple[int, int]
    pixel_agg: str = "majority"

    def path(self, image: str) -> pathlib.Path:
        p = pathlib.Path(image)
        try:
            rel = p.relative_to(self.images_root)
        except ValueError:
            rel = pathlib.Path(p.name)
        return self.masks_root / rel.with_suffix(".png")

    def load(self, image: str) -> tuple[np.ndarray, np.ndarray]:
        pixels = self.preprocess(image)
        mask_path = self.path(image)
        if not mask_path.is_file():
            raise FileNotFoundError(f"no mask {mask_path} for this image")
        try:
            return pixels, patch_majority(self.preprocess.mask(str(mask_path)), self.grid, self.pixel_agg)
        except errors.DataError as exc:
            raise errors.DataError(f"mask {mask_path}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.masks_root), "pixel_agg": self.pixel_agg, "grid": list(self.grid)}


def _mask_source(spec: RecordSpec, images: Any, adapter: Any, layout: TokenLayout) -> MaskSource | None:
    if spec.masks is None:
        return None
    root = pathlib.Path(spec.masks).resolve()
    if not root.is_dir():
        raise errors.ConfigError(f"--masks {spec.masks}: not a directory")
    if layout.n_patches == 0:
        raise errors.ConfigError("--masks: --tokens cls stores no patches to label")
    images_root = pathlib.Path(images.root)
    return MaskSource(images_root if images_root.is_dir() else images_root.parent, root, adapter.preprocess,
                      adapter.patch_grid, spec.pixel_agg)


def print_progress(name: str = "recording") -> Callable[[int, int, Timings], None]:
    """A ``progress`` callback for :func:`record_dataset`: a bar on a terminal, else a log line every few seconds."""

    state: dict[str, Progress] = {}
    started = time.monotonic()  # the first call comes after the first batch: rates count from here

    def show(done: int, total: int, t: Timings) -> None:
        if "bar" not in state:
            state["bar"] = Progress(name, total, "images", log, started=started)
        bar = state["bar"]
        bar.update(done, f"decode {t.decode_s:.1f}s, model {t.model_s:.1f}s, write {t.write_s:.1f}s")
        if done >= total:
            bar.close()

    return show

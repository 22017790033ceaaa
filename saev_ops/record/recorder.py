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
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from saev_ops import __version__, atomic, errors
from saev_ops.registry import DatasetRecord, Registry
from saev_ops.settings import default_data_root
from saev_ops.shards.format import (
    DEFAULT_MAX_TOKENS_PER_SHARD,
    TOKEN_CHOICES,
    Metadata,
    TokenLayout,
    dataset_dir,
    encode_data_field,
)

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
    ``images``, under this folder): each patch gets its majority class in saev's labels.bin."""
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
        if self.tokens not in TOKEN_CHOICES:
            problems.append(f"--tokens must be one of {', '.join(TOKEN_CHOICES)}, got {self.tokens!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            problems.append(f"--dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.resolution is not None and self.resolution <= 0:
            problems.append(f"--resolution must be > 0, got {self.resolution}")
        if self.batch_size <= 0 or self.n_workers <= 0:
            problems.append("--batch-size and --workers must be > 0")
        if not self.layers:
            problems.append("--layers must name at least one layer")
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


def record_dataset(registry: Registry, spec: RecordSpec, *,
                   progress: Callable[[int, int, Timings], None] | None = None) -> DatasetRecord:
    """Record ``spec`` into a registered dataset and return it (an existing identical one, unless ``force``)."""
    import torch

    from saev_ops import datasets
    from saev_ops.record.images import open_images
    from saev_ops.record.models import describe, load_model
    from saev_ops.shards import ShardWriter

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
    if existing is not None and existing.status == "complete" and not spec.force:
        n_bad = int(existing.extra.get("n_bad_images", 0) or 0)
        if spec.strict and n_bad:
            raise errors.DataError(f"dataset {existing.name!r} was recorded skipping {n_bad} unreadable image(s) "
                                   f"(`saev-ops datasets show {existing.name}` lists them); --strict refuses it: fix "
                                   "the images, or record again with --force")
        return existing
    if existing is not None and spec.force and existing.status == "complete":
        datasets.remove_dataset(registry, existing.name, force=False, delete_files=True)
        existing = None
    if existing is None:
        with contextlib.suppress(errors.NotFoundError):
            other = registry.get_dataset(spec.name)
            raise errors.DuplicateError(f"a different dataset is already named {spec.name!r} ({other.path}); choose "
                                        "another --name or remove it with `saev-ops datasets rm`")
    elif existing.status == "failed":
        registry.update_dataset(existing.name, status="writing")  # a new attempt at a recording that failed

    data_root = pathlib.Path(spec.data_root) if spec.data_root else default_data_root()
    partial = data_root / "saev" / "shards" / f".partial-{spec_hash[:16]}"
    family = SAEV_FAMILY[adapter.family]
    md = Metadata(family=family, ckpt=spec.model, layers=tuple(layers),
                  content_tokens_per_example=layout.n_registers + layout.n_patches, cls_token=layout.n_cls == 1,
                  d_model=adapter.d_model, n_examples=len(images.items),
                  max_tokens_per_shard=max(spec.max_tokens_per_shard, layout.n_tokens * len(layers)),
                  data=encode_data_field(images.describe()), dataset=images.root, dtype=spec.dtype)
    provenance = {"images": images.describe(), "model": model_info, "tokens": spec.tokens,
                  "resolution": spec.resolution,  # what `saev-ops eval` loads the model at again
                  **({"masks": masks.describe()} if masks is not None else {}),
                  "saev_ops_version": __version__, "recording_hash": spec_hash}
    datasets.register_writing(registry, spec.name, partial, md, layout, source_path=images.root,
                              extra={"provenance": provenance}, content_hash=spec_hash)

    writer = ShardWriter(partial, md, layout, extra={"provenance": provenance})
    done_paths = set(writer.written_paths())
    start = 0
    if writer.resume_from:
        last = max(i for i, it in enumerate(images.items) if it.path in done_paths)
        start = last + 1
    bad: list[dict[str, str]] = [{"path": it.path, "error": "skipped in an earlier attempt"}
                                 for it in images.items[:start] if it.path not in done_paths]
    timings = Timings()
    token_idx = np.asarray(adapter.layout.indices(TOKEN_CHOICES[spec.tokens]))
    use_cuda = torch.device(spec.device).type == "cuda"
    try:
        load = masks.load if masks is not None else (lambda path: (adapter.preprocess(path), None))
        for batch_items, pixels, patch_labels, errors_ in _decoded_batches(images.items[start:], load, spec, timings):
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
                        hidden = adapter.hidden_states(x, layers)
                else:
                    hidden = adapter.hidden_states(x, layers)
                acts = hidden[:, :, token_idx].float().cpu().numpy()
            t1 = time.perf_counter()
            writer.write(acts, [(it.path, it.label, it.label_name) for it in batch_items], patch_labels)
            timings.model_s += t1 - t0
            timings.write_s += time.perf_counter() - t1
            timings.images += len(batch_items)
            if progress is not None:
                progress(start + timings.images + len(bad), len(images.items), timings)
        n_written = writer.n_written
        if n_written == 0:
            first = bad[0]["error"] if bad else ""
            raise errors.DataError(f"{images.root}: no readable images ({len(bad)} bad: {first})")
        sidecar = writer.finalize(n_examples=n_written)
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, Exception):  # a refusal or an error: say so (an interrupt stays `writing`, to resume)
            try:
                registry.update_dataset(spec.name, status="failed",
                                        extra={**registry.get_dataset(spec.name).extra,
                                               "error": f"{type(exc).__name__}: {exc}"[:4000]})
            except errors.SaevOpsError as inner:
                log.warning("dataset %r: could not record its failure in the registry: %s", spec.name, inner)
        raise
    final_md = writer.md
    final = dataset_dir(data_root, final_md.hash)
    atomic.replace_dir(partial, final)  # over a leftover of an earlier, unregistered attempt at the same content
    extra = {"bad_images": bad, "n_bad_images": len(bad), "timings": timings.as_dict(),
             "provenance": provenance}
    return datasets.mark_complete(registry, spec.name, sidecar, path=final, md=final_md, extra=extra)


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

    def path(self, image: str) -> pathlib.Path:
        p = pathlib.Path(image)
        try:
            rel = p.relative_to(self.images_root)
        except ValueError:
            rel = pathlib.Path(p.name)
        return self.masks_root / rel.with_suffix(".png")

    def load(self, image: str) -> tuple[np.ndarray, np.ndarray]:
        from saev_ops.record.preprocess import patch_majority

        pixels = self.preprocess(image)
        mask_path = self.path(image)
        if not mask_path.is_file():
            raise FileNotFoundError(f"no mask {mask_path} for this image")
        try:
            return pixels, patch_majority(self.preprocess.mask(str(mask_path)), self.grid)
        except ValueError as exc:
            raise ValueError(f"mask {mask_path}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.masks_root), "pixel_agg": "majority", "grid": list(self.grid)}


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
                      adapter.patch_grid)


def print_progress(name: str = "recording") -> Callable[[int, int, Timings], None]:
    """A ``progress`` callback for :func:`record_dataset`: a bar on a terminal, else a log line every few seconds."""
    from saev_ops.progress import Progress

    state: dict[str, Progress] = {}

    def show(done: int, total: int, t: Timings) -> None:
        if "bar" not in state:
            state["bar"] = Progress(name, total, "images", log)
        bar = state["bar"]
        bar.update(done, f"decode {t.decode_s:.1f}s, model {t.model_s:.1f}s, write {t.write_s:.1f}s")
        if done >= total:
            bar.close()

    return show

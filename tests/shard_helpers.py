"""Build small real datasets on disk for tests. Activation values encode where they came from:
channel 0 = example id, channel 1 = layer number, channel 2 = token index; the rest is seeded noise."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from saev_ops.shards import Metadata, ShardWriter, TokenLayout
from saev_ops.shards.format import dataset_dir, encode_data_field


def synthetic_acts(start: int, n: int, layers: tuple[int, ...], n_tokens: int, d_model: int) -> np.ndarray:
    rng = np.random.default_rng(start)
    x = rng.normal(size=(n, len(layers), n_tokens, d_model)).astype(np.float32)
    x[..., 0] = np.arange(start, start + n)[:, None, None]
    x[..., 1] = np.asarray(layers)[None, :, None]
    x[..., 2] = np.arange(n_tokens)[None, None, :]
    return x


def make_metadata(n_examples: int = 50, layers: tuple[int, ...] = (3, 7), n_patches: int = 16, cls: bool = True,
                  d_model: int = 32, dtype: str = "float32", max_tokens_per_shard: int | None = None,
                  n_registers: int = 0) -> tuple[Metadata, TokenLayout]:
    tokens = n_patches + n_registers + (1 if cls else 0)
    md = Metadata(
        family="clip", ckpt="tiny-test", layers=layers, content_tokens_per_example=n_patches + n_registers,
        cls_token=cls, d_model=d_model, n_examples=n_examples,
        max_tokens_per_shard=max_tokens_per_shard or tokens * len(layers) * 12,  # 12 examples per shard
        data=encode_data_field({"kind": "synthetic"}), dataset="/synthetic", dtype=dtype,
    )
    return md, TokenLayout(n_cls=1 if cls else 0, n_registers=n_registers, n_patches=n_patches)


def patch_classes(start: int, n: int, n_patches: int) -> np.ndarray:
    """Segmentation-style labels: patch ``j`` of example ``i`` has class ``(i + j) % 3``."""
    return ((np.arange(start, start + n)[:, None] + np.arange(n_patches)[None, :]) % 3).astype(np.uint8)


def write_dataset(root: pathlib.Path, *, batch: int = 7, labels: bool = True, patch_labels: bool = False,
                  **kw) -> pathlib.Path:  # noqa: ANN003
    """``labels``: image classes in the index; ``patch_labels``: a labels.bin of patch classes (:func:`patch_classes`),
    as a recording with masks writes it."""
    md, layout = make_metadata(**kw)
    path = dataset_dir(root, md.hash)
    w = ShardWriter(path, md, layout, extra={"test": True})
    for s in range(0, md.n_examples, batch):
        n = min(batch, md.n_examples - s)
        entries = [(f"img/{i:05d}.jpg", i % 3, f"class{i % 3}") for i in range(s, s + n)] if labels else None
        w.write(synthetic_acts(s, n, md.layers, md.tokens_per_example, md.d_model), entries,
                patch_classes(s, n, layout.n_patches) if patch_labels else None)
    w.finalize()
    return path


def write_like_saev(root: pathlib.Path, n_examples: int = 25, *, data: str | None = None, dataset: str | None = None,
                    labels: np.ndarray | None = None) -> pathlib.Path:
    """Write only saev's files, the way saev's writer lays them out (see shared notes/saev-format.md); ``data`` and
    ``dataset`` replace the metadata fields, ``labels`` (uint8, n_examples x 9) is written as labels.bin."""
    import dataclasses

    md, _ = make_metadata(n_examples=n_examples, layers=(11,), n_patches=9, d_model=16, max_tokens_per_shard=80)
    md = dataclasses.replace(md, data=md.data if data is None else data,
                             dataset=md.dataset if dataset is None else dataset)
    path = dataset_dir(root, md.hash)
    path.mkdir(parents=True)
    S, T, D = md.examples_per_shard, 10, 16  # 80 // 10 = 8 examples per shard
    acts = synthetic_acts(0, n_examples, (11,), T, D)
    shards = []
    for i in range(md.n_shards):
        mm = np.memmap(path / f"acts{i:06d}.bin", dtype=np.float32, mode="w+", shape=(S, 1, T, D))
        part = acts[i * S : (i + 1) * S]
        mm[: len(part)] = part
        mm.flush()
        shards.append({"name": f"acts{i:06d}.bin", "n_examples": len(part)})
    (path / "metadata.json").write_text(json.dumps(md.to_json_dict()))
    (path / "shards.json").write_text(json.dumps(shards))
    if labels is not None:
        np.ascontiguousarray(labels, dtype=np.uint8).tofile(path / "labels.bin")
    return path


def masked_images(root: pathlib.Path, n: int, mask: np.ndarray) -> tuple[pathlib.Path, pathlib.Path]:
    """``n`` random 64x64 images under ``root/images`` and, at the same relative paths under ``root/annotations``, the
    class-id ``mask`` (64x64 uint8) for each, ADE20K-style."""
    from PIL import Image

    imgs, masks = root / "images", root / "annotations"
    imgs.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(imgs / f"i{i}.png")
        Image.fromarray(np.asarray(mask, np.uint8), mode="L").save(masks / f"i{i}.png")
    return imgs, masks

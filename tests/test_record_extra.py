"""The optional timm and open_clip adapters: each records what the library's own ``forward_intermediates`` computes.

These run where timm / open_clip import (they need a torchvision that matches torch; the CPU torch 2.13.0 of this
project's CI has none, see README "Known gaps"); there the last test checks the one-line error instead.
"""

from __future__ import annotations

import importlib
import json
import pathlib

import numpy as np
import pytest
import torch

from saev_ops import errors
from saev_ops.record import RecordSpec, record_dataset
from saev_ops.record.images import generate_images
from saev_ops.record.models import load_model
from saev_ops.registry import Registry
from saev_ops.shards import ShardReader


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - a torchvision mismatch raises RuntimeError
        return False


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("imgs")
    generate_images(root, 6, size=40, n_classes=2)
    return root


def tiny_timm(path: pathlib.Path) -> torch.nn.Module:
    import timm
    from timm.models import save_for_hf

    args = dict(img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2, reg_tokens=2, num_classes=0)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()
    save_for_hf(model, str(path), model_args=args, safe_serialization=True)
    return model


def tiny_open_clip(path: pathlib.Path) -> torch.nn.Module:
    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    path.mkdir(parents=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}}))
    torch.manual_seed(0)
    model = open_clip.create_model("local-dir:" + str(path), load_weights=False).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return model


def reference(family: str, model: torch.nn.Module, pixels: torch.Tensor, layers: list[int]) -> np.ndarray:
    """The library's own intermediate outputs, prefix tokens first: (B, len(layers), tokens, d)."""
    with torch.inference_mode():
        if family == "timm":
            outs = model.forward_intermediates(pixels, indices=layers, return_prefix_tokens=True, norm=False,
                                               output_fmt="NLC", intermediates_only=True)
            per_layer = [torch.cat([prefix, spatial], dim=1) for spatial, prefix in outs]
        else:
            out = model.visual.forward_intermediates(pixels, indices=layers, intermediates_only=True,
                                                     output_fmt="NLC", output_extra_tokens=True)
            per_layer = [torch.cat([p, s], dim=1) for s, p in zip(out["image_intermediates"],
                                                                  out["image_intermediates_prefix"])]
    return torch.stack(per_layer, dim=1).numpy()


@pytest.mark.parametrize("family", ["timm", "open_clip"])
def test_extra_adapter_records_what_the_library_computes(tmp_path: pathlib.Path, images: pathlib.Path,
                                                         family: str) -> None:
    if not importable(family):
        pytest.skip(f"{family} does not import beside this torch (needs a matching torchvision)")
    model = (tiny_timm if family == "timm" else tiny_open_clip)(tmp_path / "model")
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    spec = RecordSpec(name="d", images=str(images), model=f"{family}:{tmp_path / 'model'}", layers=(0, 2),
                      batch_size=4, data_root=str(tmp_path / "data"))
    d = record_dataset(reg, spec)
    reader = ShardReader(d.path)
    layout = reader.layout
    assert (layout.n_cls, layout.n_registers, layout.n_patches) == (1, 2 if family == "timm" else 0, 16)
    assert d.extra["provenance"]["model"]["family"] == family
    adapter = load_model(spec.model)
    if family == "open_clip":
        assert adapter.preprocess.mean == (0.5, 0.4, 0.3)  # from the checkpoint's preprocess_cfg
    paths = [reader.index.get(i).path for i in range(6)]
    pixels = torch.from_numpy(np.stack([adapter.preprocess(p) for p in paths]))
    np.testing.assert_allclose(reader.read(0, 6), reference(family, model, pixels, [0, 2]), rtol=1e-4, atol=1e-4)


def test_extra_adapter_errors(tmp_path: pathlib.Path) -> None:
    for family in ("timm", "open_clip"):
        if not importable(family):
            with pytest.raises(errors.ConfigError, match=f"{family} does not import here"):
                load_model(f"{family}:{tmp_path}")
            continue
        with pytest.raises(errors.ConfigError, match="expected a local directory"):
            load_model(f"{family}:{tmp_path / 'missing'}")
        with pytest.raises(errors.ConfigError, match="not in the local Hugging Face cache"):
            load_model(f"{family}:hf-hub:nobody/not-a-cached-model-xyz")
        with pytest.raises(errors.ConfigError, match="weights file"):
            load_model(f"{family}:ViT-B-16@{tmp_path / 'nope.pt'}")

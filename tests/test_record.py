"""Recording: every adapter on a tiny random model, read back equal to the model's own outputs; resume; bad images;
provenance; reuse of an identical recording."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from saev_ops import errors
from saev_ops.loaders import OrderedConfig, OrderedDataLoader, ShardSelection
from saev_ops.record import RecordSpec, record_dataset
from saev_ops.record.images import file_list, generate_images
from saev_ops.record.models import load_model
from saev_ops.registry import Registry
from saev_ops.shards import ShardReader


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("imgs")
    generate_images(root, 10, size=40, n_classes=3)
    return root


@pytest.fixture
def reg(tmp_path: pathlib.Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")


def tiny_hf(tmp_path: pathlib.Path, family: str) -> str:
    import transformers as t

    common = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    model = {
        "vit": lambda: t.ViTModel(t.ViTConfig(**common)),
        "clip": lambda: t.CLIPVisionModel(t.CLIPVisionConfig(**common)),
        "dinov2": lambda: t.Dinov2Model(t.Dinov2Config(**common)),
        "dinov2-reg": lambda: t.Dinov2WithRegistersModel(t.Dinov2WithRegistersConfig(**common, num_register_tokens=2)),
        "siglip": lambda: t.SiglipVisionModel(t.SiglipVisionConfig(**common)),
    }[family]()
    path = tmp_path / family
    model.save_pretrained(path)
    return f"{family.split('-')[0]}:{path}"


def model_outputs(model_spec: str, paths: list[str], layers: list[int]) -> np.ndarray:
    adapter = load_model(model_spec)
    x = torch.from_numpy(np.stack([adapter.preprocess(p) for p in paths]))
    with torch.inference_mode():
        return adapter.hidden_states(x, adapter.resolve_layers(layers)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["builtin", "vit", "clip", "dinov2", "dinov2-reg", "siglip"])
def test_adapters_record_what_the_model_computes(tmp_path: pathlib.Path, images: pathlib.Path, reg: Registry,
                                                 family: str) -> None:
    model = "builtin:small" if family == "builtin" else tiny_hf(tmp_path, family)
    spec = RecordSpec(name="d", images=str(images), model=model, layers=(0, -1), tokens="all", batch_size=4,
                      data_root=str(tmp_path / "data"), max_tokens_per_shard=2000)
    d = record_dataset(reg, spec)
    assert d.status == "complete" and d.n_examples == 10
    reader = ShardReader(d.path)
    paths = [reader.index.get(i).path for i in range(10)]
    want = model_outputs(model, paths, [0, -1])  # (10, 2, T, D)
    got = reader.read(0, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    layout = reader.layout
    expect_cls = 0 if family == "siglip" else 1
    assert (layout.n_cls, layout.n_registers, layout.n_patches) == (expect_cls, 2 if family in ("dinov2-reg", "builtin") else 0, 16 if family != "builtin" else 64)
    # and through a loader, patches only
    batch = next(iter(OrderedDataLoader(reader, OrderedConfig(selection=ShardSelection(layers=(d.layers[-1],),
                                                                                       tokens="patches"),
                                                              batch_size=10_000))))
    first = layout.n_cls + layout.n_registers
    np.testing.assert_allclose(batch["act"].numpy(), want[:, 1, first:].reshape(-1, want.shape[-1]), rtol=1e-4,
                               atol=1e-4)
    labels = [reader.index.get(i).label_name for i in range(10)]
    assert labels == [pathlib.Path(p).parent.name for p in paths]


def test_provenance_and_reuse(tmp_path: pathlib.Path, images: pathlib.Path, reg: Registry) -> None:
    spec = RecordSpec(name="d", images=str(images), model="builtin:tiny", layers=(2,), tokens="patches",
                      dtype="float16", data_root=str(tmp_path / "data"))
    d = record_dataset(reg, spec)
    prov = d.extra["provenance"]
    assert prov["images"]["n_files"] == 10 and len(prov["images"]["list_sha256"]) == 64
    assert prov["images"]["path"] == str(images.resolve())
    assert prov["model"]["family"] == "builtin" and len(prov["model"]["weights_sha256"]) == 64
    assert prov["tokens"] == "patches" and prov["saev_ops_version"]
    assert d.layers == (2,) and d.dtype == "float16" and d.tokens_per_example == 16 and d.source_path == str(images.resolve())
    assert 0 < d.extra["stats"]["storage_nmse"] < 1e-5
    again = record_dataset(reg, spec)
    assert again.id == d.id and again.path == d.path  # same recording: reused, nothing written
    forced = record_dataset(reg, RecordSpec(**{**spec.__dict__, "force": True}))
    assert forced.status == "complete" and forced.created_at > d.created_at
    with pytest.raises(errors.DuplicateError, match="already named 'd'"):
        record_dataset(reg, RecordSpec(**{**spec.__dict__, "tokens": "all"}))


def test_interrupted_recording_resumes(tmp_path: pathlib.Path, images: pathlib.Path, reg: Registry) -> None:
    spec = RecordSpec(name="d", images=str(images), model="builtin:tiny", layers=(1, 3), batch_size=3,
                      data_root=str(tmp_path / "data"), max_tokens_per_shard=17 * 2 * 4)  # 4 examples per shard

    def die(done: int, total: int, timings: object) -> None:
        if done >= 6:
            raise KeyboardInterrupt  # Ctrl-C or a killed job, after shard 0 is finished

    with pytest.raises(KeyboardInterrupt):
        record_dataset(reg, spec, progress=die)
    assert reg.get_dataset("d").status == "writing"
    partial = next((tmp_path / "data" / "saev" / "shards").glob(".partial-*"))
    assert (partial / "acts000000.bin").exists() and not (partial / "metadata.json").exists()
    d = record_dataset(reg, spec)
    assert d.status == "complete" and d.n_examples == 10 and not partial.exists()
    ref = record_dataset(Registry(f"sqlite:///{tmp_path / 'ref.sqlite'}"),
                         RecordSpec(**{**spec.__dict__, "data_root": str(tmp_path / "ref")}))
    np.testing.assert_array_equal(ShardReader(d.path).read(0, 10), ShardReader(ref.path).read(0, 10))


def test_bad_images_are_skipped_and_listed(tmp_path: pathlib.Path, reg: Registry) -> None:
    from PIL import Image

    root = tmp_path / "imgs"
    generate_images(root, 6, size=32, n_classes=2)
    (root / "class0" / "garbage.png").write_bytes(b"not an image")
    good = (root / "class1" / "img00001.png").read_bytes()
    (root / "class1" / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("LA", (32, 32), (128, 200)).save(root / "class1" / "gray_alpha.png")  # odd mode: converted, kept
    spec = RecordSpec(name="d", images=str(root), model="builtin:tiny", data_root=str(tmp_path / "data"))
    with pytest.raises(errors.DataError, match=r"garbage.png: cannot read image.*drop --strict"):
        record_dataset(reg, RecordSpec(**{**spec.__dict__, "strict": True}))
    d = record_dataset(reg, spec)  # the same recording, now skipping bad images
    assert d.n_examples == 7 and d.extra["n_bad_images"] == 2
    assert sorted(pathlib.Path(b["path"]).name for b in d.extra["bad_images"]) == ["garbage.png", "truncated.png"]


def test_file_list_source(tmp_path: pathlib.Path, images: pathlib.Path) -> None:
    files = sorted(images.rglob("*.png"))[:3]
    lst = tmp_path / "list.txt"
    lst.write_text("# a comment\n" + "".join(f"{f}\tcat{i % 2}\n" for i, f in enumerate(files)))
    s = file_list(lst)
    assert [i.label_name for i in s.items] == ["cat0", "cat1", "cat0"] and s.items[1].label == 1
    lst.write_text(f"{files[0]}\ta\tb\n")
    with pytest.raises(errors.ConfigError, match=r"list.txt:1: expected 'PATH' or 'PATH<TAB>CLASS'"):
        file_list(lst)


def test_bad_model_and_layers(tmp_path: pathlib.Path, images: pathlib.Path, reg: Registry) -> None:
    with pytest.raises(errors.ConfigError, match="has 4 blocks"):
        record_dataset(reg, RecordSpec(name="d", images=str(images), model="builtin:tiny", layers=(9,)))
    with pytest.raises(errors.ConfigError, match="never downloads"):
        load_model(f"vit:{tmp_path / 'nothing-here'}")
    with pytest.raises(errors.ConfigError, match="expected FAMILY:CHECKPOINT"):
        load_model("vit")

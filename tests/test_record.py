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
from tests.helpers import tiny_hf


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("imgs")
    generate_images(root, 10, size=40, n_classes=3)
    return root


@pytest.fixture
def reg(tmp_path: pathlib.Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")


def model_outputs(model_spec: str, paths: list[str], layers: list[int]) -> np.ndarray:
    adapter = load_model(model_spec)
    x = torch.from_numpy(np.stack([adapter.preprocess(p) for p in paths]))
    with torch.inference_mode():
        return adapter.hidden_states(x, adapter.resolve_layers(layers)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["builtin", "vit", "clip", "dinov2", "dinov2-reg", "siglip", "dinov3", "siglip2"])
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
    expect_cls = 0 if family.startswith("siglip") else 1
    n_reg = 2 if family in ("dinov2-reg", "builtin", "dinov3") else 0
    assert (layout.n_cls, layout.n_registers, layout.n_patches) == (expect_cls, n_reg, 16 if family != "builtin" else 64)
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


def saev_rows(root: pathlib.Path) -> tuple[dict, np.ndarray]:
    """Read a dataset directory with saev's rules only (its metadata.json, shards.json and raw float32 files):
    (metadata, (n_examples, layers, tokens, d_model)), token 0 = CLS when cls_token, the next
    content_tokens_per_example rows = patches."""
    import json

    md = json.loads((root / "metadata.json").read_text())
    t = md["content_tokens_per_example"] + (1 if md["cls_token"] else 0)
    per_shard = md["max_tokens_per_shard"] // (t * len(md["layers"]))
    parts = []
    for shard in json.loads((root / "shards.json").read_text()):
        arr = np.fromfile(root / shard["name"], dtype=np.float32)
        parts.append(arr.reshape(per_shard, len(md["layers"]), t, md["d_model"])[: shard["n_examples"]])
    return md, np.concatenate(parts)


@pytest.mark.parametrize("tokens", ["cls+patches", "patches", "cls", "all"])
def test_each_token_layout_reads_right_under_saevs_rules(tmp_path: pathlib.Path, images: pathlib.Path, reg: Registry,
                                                        tokens: str) -> None:
    """builtin:small has CLS, 2 registers and 64 patches. saev takes row 0 as CLS (when cls_token) and every other row
    as a patch: the default layout must give it exactly the model's CLS and patches; `all` keeps the registers, which
    saev would misread, and says so in the sidecar."""
    spec = RecordSpec(name="d", images=str(images), model="builtin:small", layers=(1,), tokens=tokens,
                      data_root=str(tmp_path / "data"), max_tokens_per_shard=67 * 4)
    d = record_dataset(reg, spec)
    md, rows = saev_rows(pathlib.Path(d.path))
    reader = ShardReader(d.path)
    paths = [reader.index.get(i).path for i in range(10)]
    want = model_outputs("builtin:small", paths, [1])  # (10, 1, 1 + 2 + 64, D): CLS, registers, patches
    cls, patches = want[:, :, 0], want[:, :, 3:]
    saev_cls = rows[:, :, 0] if md["cls_token"] else None
    saev_patches = rows[:, :, 1:] if md["cls_token"] else rows
    sidecar = reader.sidecar["token_layout"]
    assert sidecar["name"] == tokens
    if tokens == "cls+patches":
        assert md["cls_token"] and md["content_tokens_per_example"] == 64 and sidecar["saev_compatible"]
        np.testing.assert_allclose(saev_cls, cls, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(saev_patches, patches, rtol=1e-4, atol=1e-4)
    elif tokens == "patches":
        assert not md["cls_token"] and md["content_tokens_per_example"] == 64
        np.testing.assert_allclose(saev_patches, patches, rtol=1e-4, atol=1e-4)
    elif tokens == "cls":
        assert md["cls_token"] and md["content_tokens_per_example"] == 0
        np.testing.assert_allclose(saev_cls, cls, rtol=1e-4, atol=1e-4)
    else:  # registers are kept: saev would count 66 "patches", the first two of them registers
        assert md["content_tokens_per_example"] == 66 and not sidecar["saev_compatible"]
        assert sidecar["n_registers"] == 2
        np.testing.assert_allclose(saev_patches[:, :, 2:], patches, rtol=1e-4, atol=1e-4)
        loader = OrderedDataLoader(d.path, OrderedConfig(selection=ShardSelection(layers=(1,), tokens="patches"),
                                                         batch_size=10_000))
        np.testing.assert_allclose(next(iter(loader))["act"].numpy(), patches.reshape(-1, patches.shape[-1]),
                                   rtol=1e-4, atol=1e-4)  # saev-ops itself skips them


def test_default_layout_keeps_identities_of_models_without_registers(tmp_path: pathlib.Path, images: pathlib.Path,
                                                                     reg: Registry) -> None:
    """Before cls+patches, builtin:tiny (no registers) was recorded with --tokens all: the same content, so the same
    recording (reused, not refused as a second dataset of that name)."""
    base = dict(name="d", images=str(images), model="builtin:tiny", layers=(1,), data_root=str(tmp_path / "data"))
    first = record_dataset(reg, RecordSpec(**base, tokens="all"))
    again = record_dataset(reg, RecordSpec(**base))
    assert again.id == first.id and again.path == first.path


@pytest.mark.slow
def test_relative_and_absolute_model_paths_are_one_recording(tmp_path: pathlib.Path, images: pathlib.Path,
                                                             reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_hf(tmp_path, "vit")
    family, path = model.split(":", 1)
    base = dict(name="d", images=str(images), layers=(1,), data_root=str(tmp_path / "data"))
    first = record_dataset(reg, RecordSpec(**base, model=model))
    monkeypatch.chdir(tmp_path)
    again = record_dataset(reg, RecordSpec(**base, model=f"{family}:{pathlib.Path(path).name}"))
    assert again.id == first.id
    assert first.extra["provenance"]["model"]["resolved"] == f"vit:{pathlib.Path(path).resolve()}"


def _odd_images(root: pathlib.Path) -> list[pathlib.Path]:
    """Landscape, portrait and square RGB images (the resize rules differ on each)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(exist_ok=True)
    out = []
    for i, (h, w) in enumerate([(50, 70), (80, 45), (40, 40)]):
        out.append(root / f"{i}.png")
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(out[-1])
    return out


def _processor(family: str):  # noqa: ANN202  # a transformers image processor; its class varies by family
    import transformers as t

    imagenet = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return {
        "vit": lambda: t.ViTImageProcessorPil(size={"height": 32, "width": 32}),
        "clip": lambda: t.CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}),
        # DINOv2's standard processor: short side 256 -> crop 224 (here 40 -> 32), whatever config.image_size says
        "dinov2": lambda: t.BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                                 **imagenet),
        "siglip": lambda: t.SiglipImageProcessorPil(size={"height": 32, "width": 32}),
        "siglip2": lambda: t.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16),
    }[family]()


@pytest.mark.parametrize("family", ["vit", "clip", "dinov2", "siglip", "siglip2"])
def test_preprocessing_matches_the_librarys_image_processor(tmp_path: pathlib.Path, family: str) -> None:
    """saev-ops' Pillow/numpy preprocessing of a checkpoint equals transformers' own image processor (its Pillow
    backend) saved with that checkpoint: tolerance 1e-6 (seen: exactly equal). The model's config.image_size is 64
    here, and the processor's 32 wins: 16 patches, not 64, and the model runs on them."""
    from PIL import Image

    ckpt = tiny_hf(tmp_path, family, image_size=64)
    path = pathlib.Path(ckpt.split(":", 1)[1])
    proc = _processor(family)
    proc.save_pretrained(path)
    adapter = load_model(ckpt)
    assert adapter.layout.n_patches == 16
    for img in _odd_images(tmp_path / "imgs"):
        with Image.open(img) as im:
            out = proc(im.convert("RGB"), return_tensors="np")
        got = adapter.preprocess(str(img))
        if family == "siglip2":
            if Image.open(img).size[0] != Image.open(img).size[1]:
                continue  # its processor keeps the aspect with a grid per image; a recording takes one square
            from saev_ops.record.models import siglip2_inputs

            want = out["pixel_values"][0]
            got = siglip2_inputs(torch.from_numpy(got)[None], 8)["pixel_values"][0].numpy()
        else:
            want = out["pixel_values"][0]
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    pixels = torch.from_numpy(np.stack([adapter.preprocess(str(p)) for p in _odd_images(tmp_path / "imgs")]))
    n_cls = adapter.layout.n_cls
    assert adapter.hidden_states(pixels, [0]).shape == (3, 1, n_cls + 16, 32)


def test_dinov3_preprocessing_is_its_processors_recipe(tmp_path: pathlib.Path) -> None:
    """DINOv3's image processor needs torchvision (not importable beside this torch), so its documented recipe is
    checked instead: resize to the square size (bilinear, aspect not kept), ImageNet mean/std."""
    from PIL import Image

    adapter = load_model(tiny_hf(tmp_path, "dinov3"))
    for img in _odd_images(tmp_path / "imgs"):
        with Image.open(img) as im:
            ref = np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255
        ref = (ref - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        np.testing.assert_allclose(adapter.preprocess(str(img)), ref.transpose(2, 0, 1), atol=1e-6)
    assert adapter.layout.n_tokens == 1 + 2 + 16


def test_resolution_sets_the_patch_grid(tmp_path: pathlib.Path, images: pathlib.Path, reg: Registry) -> None:
    ckpt = tiny_hf(tmp_path, "dinov2")
    assert load_model(ckpt, resolution=48).layout.n_patches == 36
    with pytest.raises(errors.ConfigError, match="multiple of the patch size 8"):
        load_model(ckpt, resolution=50)
    with pytest.raises(errors.ConfigError, match="only for the transformers families"):
        load_model("builtin:tiny", resolution=48)
    d = record_dataset(reg, RecordSpec(name="r", images=str(images), model=ckpt, resolution=48, layers=(1,),
                                       data_root=str(tmp_path / "data")))
    assert d.tokens_per_example == 1 + 36


def _masked_images(root: pathlib.Path, n: int = 6) -> tuple[pathlib.Path, pathlib.Path]:
    """ADE20K-style: images/x.png and annotations/x.png, each mask one class id per pixel: left third class 3,
    the rest class 7, with a class-200 square in the top-left 8x8 corner."""
    from PIL import Image

    imgs, masks = root / "images", root / "annotations"
    for d in (imgs, masks):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(imgs / f"img{i}.png")
        m = np.full((64, 64), 7, np.uint8)
        m[:, : 64 // 3] = 3
        m[:8, :8] = 200
        Image.fromarray(m, mode="L").save(masks / f"img{i}.png")
    return imgs, masks


def test_masks_give_each_patch_its_majority_class(tmp_path: pathlib.Path, reg: Registry) -> None:
    """builtin:small: 64x64 images, 8x8 patches -> an 8x8 grid. saev's labels.bin gets each patch's majority class
    (saev's pixel_agg); `latents top`'s reading API returns it per row."""
    from saev_ops.record.preprocess import patch_majority

    imgs, masks = _masked_images(tmp_path)
    d = record_dataset(reg, RecordSpec(name="seg", images=str(imgs), masks=str(masks), model="builtin:small",
                                       layers=(1,), data_root=str(tmp_path / "data"), max_tokens_per_shard=65 * 4))
    md, _ = saev_rows(pathlib.Path(d.path))
    labels = np.fromfile(pathlib.Path(d.path) / "labels.bin", np.uint8).reshape(6, md["content_tokens_per_example"])
    want = np.full((8, 8), 7, np.uint8)
    want[:, :2] = 3  # columns 0-15 are class 3 (0-20): patch column 2 (16-23) has 5 of 8 pixels of class 3
    want[:, 2] = 3
    want[0, 0] = 200
    assert (labels == want.ravel()).all()
    assert not list(pathlib.Path(d.path).glob(".labels*.npy"))  # the per-shard parts are joined and removed
    assert d.extra["provenance"]["masks"]["pixel_agg"] == "majority"
    # ties go to the smaller id; ids past 255 do not fit saev's uint8 labels
    assert patch_majority(np.array([[1, 2], [2, 1]]), (1, 1)).tolist() == [1]
    with pytest.raises(errors.DataError, match="0..255"):
        patch_majority(np.array([[1, 300], [2, 1]]), (1, 1))


def test_missing_mask_is_a_bad_image(tmp_path: pathlib.Path, reg: Registry) -> None:
    imgs, masks = _masked_images(tmp_path)
    (masks / "img2.png").unlink()
    d = record_dataset(reg, RecordSpec(name="seg", images=str(imgs), masks=str(masks), model="builtin:small",
                                       layers=(1,), data_root=str(tmp_path / "data")))
    assert d.n_examples == 5 and "no mask" in d.extra["bad_images"][0]["error"]
    with pytest.raises(errors.DataError, match=r"img2.png: cannot read image .*no mask .*annotations/img2.png"):
        record_dataset(Registry(f"sqlite:///{tmp_path / 'r2.sqlite'}"),
                       RecordSpec(name="seg", images=str(imgs), masks=str(masks), model="builtin:small", layers=(1,),
                                  data_root=str(tmp_path / "data2"), strict=True))


def test_prefer_fg_labels_a_patch_by_its_foreground(tmp_path: pathlib.Path, reg: Registry) -> None:
    """saev's pixel_agg="prefer-fg": a patch takes its most common class other than the background (0) when it has
    any; stored in saev's metadata.json, and a recording of its own (another identity than the majority rule's)."""
    import json

    from saev_ops.record.preprocess import patch_majority
    from tests.shard_helpers import masked_images

    m = np.array([[0, 0], [0, 5]])
    assert patch_majority(m, (1, 1)).tolist() == [0]
    assert patch_majority(m, (1, 1), "prefer-fg").tolist() == [5]
    assert patch_majority(np.zeros((2, 2), int), (1, 1), "prefer-fg").tolist() == [0]
    assert patch_majority(np.array([[0, 9], [4, 0]]), (1, 1), "prefer-fg").tolist() == [4]  # ties: smaller id
    mask = np.zeros((64, 64), np.uint8)
    mask[:2, :2] = 6  # 4 of a patch's 64 pixels: background wins the majority, not prefer-fg
    imgs, masks = masked_images(tmp_path, 3, mask)
    common = dict(images=str(imgs), masks=str(masks), model="builtin:small", layers=(1,),
                  data_root=str(tmp_path / "data"))
    fg = record_dataset(reg, RecordSpec(name="fg", pixel_agg="prefer-fg", **common))
    maj = record_dataset(reg, RecordSpec(name="maj", **common))
    assert fg.path != maj.path
    assert json.loads((pathlib.Path(fg.path) / "metadata.json").read_text())["pixel_agg"] == "prefer-fg"
    grid = {d.name: np.fromfile(pathlib.Path(d.path) / "labels.bin", np.uint8).reshape(3, -1) for d in (fg, maj)}
    n_reg = grid["fg"].shape[1] - 64  # register columns come first, 255
    assert grid["fg"][:, n_reg].tolist() == [6, 6, 6] and grid["maj"][:, n_reg].tolist() == [0, 0, 0]
    assert fg.extra["provenance"]["masks"]["pixel_agg"] == "prefer-fg"
    with pytest.raises(errors.ConfigError, match="--pixel-agg applies to --masks"):
        RecordSpec(name="x", images=str(imgs), model="builtin:small", pixel_agg="prefer-fg")


def test_recording_and_training_name_token_selections_alike() -> None:
    """One vocabulary: what `datasets record --tokens NAME` stores is what `tokens: NAME` selects of the model's
    tokens, and the command offers exactly the recordable names."""
    from saev_ops import tokens
    from saev_ops.cli import cli
    from saev_ops.record.recorder import stored_layout
    from saev_ops.shards.format import TokenLayout

    option = next(p for p in cli.commands["datasets"].commands["record"].params if p.name == "tokens")
    assert tuple(option.type.choices) == tokens.RECORDABLE and set(tokens.RECORDABLE) <= set(tokens.SELECTIONS)
    model = TokenLayout(n_cls=1, n_registers=4, n_patches=16)
    for name in tokens.RECORDABLE:
        assert stored_layout(model, name).n_tokens == len(model.indices(name)), name
        assert stored_layout(model, name).name == name
    assert model.indices("no-registers") == model.indices("cls+patches") == [0, *range(5, 21)]


def test_preprocessing_refusals_are_saev_ops_errors() -> None:
    """Every deliberate refusal of preprocess.py is a SaevOpsError (the CLI prints it as one line), not a ValueError:
    configurations a ConfigError, masks a DataError."""
    from saev_ops.record.preprocess import Preprocess, from_hf_config, patch_majority

    with pytest.raises(errors.ConfigError, match="needs a resize or a crop"):
        Preprocess(resize=None, crop=None)
    with pytest.raises(errors.ConfigError, match="rescale_factor"):
        from_hf_config({"rescale_factor": 0.5}, default_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(errors.ConfigError, match="pixel_agg"):
        patch_majority(np.zeros((4, 4), dtype=np.int64), (2, 2), "mode")
    with pytest.raises(errors.DataError, match="does not divide"):
        patch_majority(np.zeros((5, 4), dtype=np.int64), (2, 2))

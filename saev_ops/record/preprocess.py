"""Image preprocessing with Pillow and numpy (no torchvision): RGB, resize, centre crop, normalise, as each model's
reference image processor does (transformers' from the checkpoint's ``preprocessor_config.json``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from saev_ops import errors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}  # Pillow's codes


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preprocess:
    """What a model's own image processor does, in Pillow and numpy: RGB, resize, centre crop, scale to 0..1,
    normalise. Built from a checkpoint's ``preprocessor_config.json`` by :func:`from_hf_config`."""

    resize: int | tuple[int, int] | None
    """Short side after resizing (aspect kept), or an exact (height, width), or None for no resize."""
    crop: int | tuple[int, int] | None
    """Centre crop: a square side, (height, width), or None for no crop."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: str = "bicubic"
    rounding: str = "round"
    """How the long side of a short-side resize is rounded: ``round`` (saev-ops' own models, timm, open_clip) or
    ``floor`` (transformers' image processors)."""

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE:
            raise errors.ConfigError(f"resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}")
        if self.rounding not in ("round", "floor"):
            raise errors.ConfigError(f"rounding must be round or floor, got {self.rounding!r}")
        if self.resize is None and self.crop is None:
            raise errors.ConfigError("a preprocessing needs a resize or a crop, or its output size varies with the "
                                     "image")

    @property
    def out_hw(self) -> tuple[int, int]:
        """(height, width) of every output."""
        if self.crop is not None:
            return _hw(self.crop)
        assert isinstance(self.resize, tuple), "an int resize without a crop keeps each image's aspect"
        return self.resize

    def __call__(self, path: str) -> np.ndarray:
        """Load ``path`` and return float32 (3, H, W). Raises whatever Pillow raises for a bad file."""
        from PIL import Image

        with Image.open(path) as im:
            im = to_rgb(im)
            im = self.resize_image(im)
            if self.crop is not None:
                ch, cw = _hw(self.crop)
                w, h = im.size
                left, top = (w - cw) // 2, (h - ch) // 2
                im = im.crop((left, top, left + cw, top + ch))  # Pillow pads with black past the edges
            arr: np.ndarray = np.asarray(im, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def mask(self, path: str) -> np.ndarray:
        """A segmentation mask (one class id per pixel: a greyscale, palette or 16-bit PNG) under the same resize and
        crop as the image, nearest-neighbour so no class is blended: int64 (H, W)."""
        from PIL import Image

        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B", "1"):
                raise errors.DataError(f"a mask must hold one class id per pixel (greyscale, palette or 16-bit), got "
                                       f"mode {im.mode}")
            im = dataclasses.replace(self, resample="nearest").resize_image(im)
            if self.crop is not None:
                ch, cw = _hw(self.crop)
                w, h = im.size
                left, top = (w - cw) // 2, (h - ch) // 2
                im = im.crop((left, top, left + cw, top + ch))
            return np.asarray(im, dtype=np.int64)

    def resize_image(self, im: Any) -> Any:
        if self.resize is None:
            return im
        w, h = im.size
        if isinstance(self.resize, tuple):
            nh, nw = self.resize
        elif self.rounding == "floor":  # transformers' get_resize_output_image_size(default_to_square=False)
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.resize * long / short)
            nw, nh = (self.resize, new_long) if w <= h else (new_long, self.resize)
        else:
            scale = self.resize / min(w, h)
            crop_h, crop_w = _hw(self.crop) if self.crop is not None else (0, 0)
            nw, nh = max(crop_w, round(w * scale)), max(crop_h, round(h * scale))
        return im.resize((nw, nh), RESAMPLE[self.resample])

    def describe(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        if d["rounding"] == "round":  # recordings made before the field existed rounded; their identities hold
            del d["rounding"]
        return d


PIXEL_AGGS = ("majority", "prefer-fg")
"""How a patch's pixels' classes become its label, by saev's names: the most common class, or the most common class
other than the background (0) whenever the patch has any."""


def patch_majority(mask: np.ndarray, grid: tuple[int, int], pixel_agg: str = "majority") -> np.ndarray:
    """Each patch's label (ties to the smaller id): the class id most of its pixels carry (saev's
    ``pixel_agg="majority"``), or with ``prefer-fg`` the most common class other than the background (0) when the
    patch has any, else 0. ``mask`` (H, W) of ids 0..255, ``grid`` (rows, cols) of patches -> uint8 (rows*cols,)."""
    gh, gw = grid
    h, w = mask.shape
    if h % gh or w % gw:
        raise errors.DataError(f"a {h}x{w} mask does not divide into a {gh}x{gw} patch grid")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise errors.DataError(f"class ids must be 0..255 to fit saev's labels.bin, found {int(mask.min())}.."
                               f"{int(mask.max())}")
    ph, pw = h // gh, w // gw
    patches = mask.reshape(gh, ph, gw, pw).transpose(0, 2, 1, 3).reshape(gh * gw, ph * pw)
    counts = np.zeros((gh * gw, 256), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(gh * gw), ph * pw), patches.ravel()), 1)
    if pixel_agg == "prefer-fg":
        foreground = counts[:, 1:]
        return np.where(foreground.sum(axis=1) > 0, foreground.argmax(axis=1) + 1, 0).astype(np.uint8)
    if pixel_agg != "majority":
        raise errors.ConfigError(f"pixel_agg must be one of {', '.join(PIXEL_AGGS)}, got {pixel_agg!r}")
    return counts.argmax(axis=1).astype(np.uint8)  # argmax takes the first maximum: the smaller id


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


def from_hf_config(cfg: dict[str, Any], *, default_size: int, mean: tuple[float, float, float],
                   std: tuple[float, float, float], resample: str = "bicubic",
                   resolution: int | None = None) -> Preprocess:
    """A transformers ``preprocessor_config.json`` as a :class:`Preprocess`: ``size`` (``shortest_edge`` or
    ``height``/``width``), ``do_resize``, ``do_center_crop`` + ``crop_size``, ``resample`` (Pillow code),
    ``image_mean``/``image_std`` (with ``do_normalize``), ``rescale_factor`` (1/255 only). Missing keys take the
    family's defaults (``default_size`` square, ``mean``, ``std``, ``resample``). ``resolution`` overrides the size:
    the short side is resized to it and a square of it cropped (or the image resized to that square when the
    processor does not crop)."""
    if cfg.get("do_rescale", True) and abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise errors.ConfigError(f"rescale_factor {cfg['rescale_factor']} is not 1/255")
    size = cfg.get("size", {"height": default_size, "width": default_size})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    resize: int | tuple[int, int] | None
    if "shortest_edge" in size:
        resize = int(size["shortest_edge"])
    elif "height" in size and "width" in size:
        resize = (int(size["height"]), int(size["width"]))
    else:
        raise errors.ConfigError(f"size {size}: expected shortest_edge or height and width")
    if not cfg.get("do_resize", True):
        resize = None
    crop: int | tuple[int, int] | None = None
    if cfg.get("do_center_crop", False):
        cs = cfg.get("crop_size", {"height": default_size, "width": default_size})
        crop = (int(cs), int(cs)) if isinstance(cs, int) else (int(cs["height"]), int(cs["width"]))
    if resolution is not None:
        resize, crop = (resolution, (resolution, resolution)) if crop is not None else ((resolution, resolution), None)
    if cfg.get("do_normalize", True):
        mean = _triple(cfg.get("image_mean", mean))
        std = _triple(cfg.get("image_std", std))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    code = cfg.get("resample")
    if code is not None:
        names = {v: k for k, v in RESAMPLE.items()}
        if int(code) not in names:
            raise errors.ConfigError(f"resample {code}: not a Pillow resampling filter")
        resample = names[int(code)]
    if resize is not None and crop is None and isinstance(resize, int):
        raise errors.ConfigError(f"size {size} without a centre crop gives each image its own shape; recording needs "
                                 "one shape (give --resolution)")
    return Preprocess(resize=resize, crop=crop, mean=mean, std=std, resample=resample, rounding="floor")


def _triple(v: Any) -> tuple[float, float, float]:
    vals = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise errors.ConfigError(f"expected 3 channel values, got {v!r}")
    return (vals[0], vals[1], vals[2])


# Pillow's integer modes wider than 8 bits: 16-bit PNG and TIFF greyscale open as these. convert("RGB") clips them at
# 255, so a 16-bit image came out white; they are scaled to 8 bits instead.
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(im: Any) -> Any:
    """An 8-bit RGB image of ``im``, whatever its mode: 16-bit greyscale scaled by 255/65535 (mode ``I`` as 16-bit
    too, the way PNG decoders give it), float greyscale (``F``) taken as 0..1; CMYK, palette, RGBA and the rest through
    Pillow's own conversion, as the models' reference preprocessors do."""
    from PIL import Image

    if im.mode in _WIDE_INT_MODES:
        arr = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64) * 255.0
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return im if im.mode == "RGB" else im.convert("RGB")

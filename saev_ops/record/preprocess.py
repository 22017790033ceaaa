"""Image preprocessing with Pillow and numpy (no torchvision): RGB, resize the short side, centre crop, normalise."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preprocess:
    resize: int
    """Short side after resizing."""
    crop: int
    """Centre crop (square)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: str = "bicubic"

    def __call__(self, path: str) -> np.ndarray:
        """Load ``path`` and return float32 (3, crop, crop). Raises whatever Pillow raises for a bad file."""
        from PIL import Image

        with Image.open(path) as im:
            im.draft("RGB", (self.resize, self.resize))  # JPEG: decode at reduced size when possible
            im = to_rgb(im)
            w, h = im.size
            scale = self.resize / min(w, h)
            nw, nh = max(self.crop, round(w * scale)), max(self.crop, round(h * scale))
            method = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[self.resample]
            im = im.resize((nw, nh), method)
            left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
            im = im.crop((left, top, left + self.crop, top + self.crop))
            arr: np.ndarray = np.asarray(im, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def describe(self) -> dict[str, object]:
        return dataclasses.asdict(self)


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

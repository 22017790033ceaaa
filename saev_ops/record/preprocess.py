"""Image preprocessing with Pillow and numpy (no torchvision): RGB, resize the short side, centre crop, normalise."""

from __future__ import annotations

import dataclasses

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
            im = im.convert("RGB")
            w, h = im.size
            scale = self.resize / min(w, h)
            nw, nh = max(self.crop, round(w * scale)), max(self.crop, round(h * scale))
            method = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[self.resample]
            im = im.resize((nw, nh), method)
            left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
            im = im.crop((left, top, left + self.crop, top + self.crop))
            arr = np.asarray(im, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def describe(self) -> dict[str, object]:
        return dataclasses.asdict(self)

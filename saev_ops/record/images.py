"""Image sources for recording: an image folder (class sub-folders become labels), a file list, generated images.

Every source yields :class:`ImageItem` in a fixed (sorted) order and describes itself for provenance, including a hash
of its sorted file list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any

import numpy as np

from saev_ops import atomic, errors

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclasses.dataclass(frozen=True)
class ImageItem:
    path: str
    label: int | None
    label_name: str | None


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """A resolved image source: its items and a description for the registry."""

    kind: str
    root: str
    items: tuple[ImageItem, ...]

    @property
    def list_hash(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.path}\t{it.label_name or ''}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.root, "n_files": len(self.items), "list_sha256": self.list_hash,
                "classes": sorted({i.label_name for i in self.items if i.label_name is not None})}


def image_folder(root: str | pathlib.Path) -> ImageSet:
    """Images under ``root``; files in a sub-folder get that folder's name as their class (labels in sorted order)."""
    root = pathlib.Path(root).resolve()
    if not root.is_dir():
        raise errors.ConfigError(f"--images {root}: not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise errors.ConfigError(f"--images {root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    class_id = {c: i for i, c in enumerate(classes)}
    items = []
    for p in files:
        parts = p.relative_to(root).parts
        name = parts[0] if len(parts) > 1 else None
        items.append(ImageItem(str(p), class_id[name] if name is not None else None, name))
    return ImageSet("image-folder", str(root), tuple(items))


def file_list(list_path: str | pathlib.Path) -> ImageSet:
    """A text file with one image per line: ``PATH`` or ``PATH<TAB>CLASS``; relative paths are relative to the file."""
    list_path = pathlib.Path(list_path).resolve()
    try:
        lines = list_path.read_text().splitlines()
    except OSError as exc:
        raise errors.ConfigError(f"--images {list_path}: cannot read the file list ({exc.strerror})") from None
    entries = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) > 2 or not parts[0].strip():
            raise errors.ConfigError(f"{list_path}:{lineno}: expected 'PATH' or 'PATH<TAB>CLASS', got {line!r}")
        p = pathlib.Path(parts[0].strip())
        p = p if p.is_absolute() else (list_path.parent / p)
        entries.append((str(p.resolve()), parts[1].strip() if len(parts) == 2 else None))
    if not entries:
        raise errors.ConfigError(f"{list_path}: the file list names no images")
    entries.sort()
    class_id = {c: i for i, c in enumerate(sorted({c for _, c in entries if c is not None}))}
    items = tuple(ImageItem(p, class_id[c] if c is not None else None, c) for p, c in entries)
    return ImageSet("file-list", str(list_path), items)


def open_images(spec: str | pathlib.Path) -> ImageSet:
    """A directory is an image folder; a file is a file list."""
    path = pathlib.Path(spec)
    if path.is_dir():
        return image_folder(path)
    if path.is_file():
        return file_list(path)
    raise errors.ConfigError(f"--images {spec}: no such directory or file list")


def generate_images(root: str | pathlib.Path, n: int = 64, *, size: int = 64, n_classes: int = 4,
                    seed: int = 0) -> ImageSet:
    """Write ``n`` small PNG images in ``n_classes`` class folders (seeded shapes and colours), for the quickstart and
    tests. Existing files are kept, so calling it twice is cheap."""
    from PIL import Image, ImageDraw

    if n <= 0 or n_classes <= 0 or size < 8:
        raise errors.ConfigError(
            f"generate_images: need n > 0, n_classes > 0, size >= 8 (got {n}, {n_classes}, {size})")
    root = pathlib.Path(root)
    palette = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (160, 60, 200), (40, 200, 200)]
    for i in range(n):
        cls = i % n_classes
        path = root / f"class{cls}" / f"img{i:05d}.png"
        if path.exists():
            continue
        rng = np.random.default_rng([seed, i])
        bg = tuple(int(x) for x in rng.integers(0, 90, 3))
        img = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(img)
        color = palette[cls % len(palette)]
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
            w = int(rng.integers(size // 6, size // 2))
            box = (x0, y0, min(size - 1, x0 + w), min(size - 1, y0 + w))
            (draw.ellipse if cls % 2 else draw.rectangle)(box, fill=color)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_file(path) as tmp:
            img.save(tmp, format="PNG")
    return image_folder(root)

"""What a saev directory says about its images: its ``data`` field (a pickled saev dataset config) and image folder.

saev's ``metadata.json`` stores ``data`` as base64 of a pickled ``saev.data.datasets.*`` config object. It is read
here without saev and without running anything it names: the unpickler builds plain stand-ins for saev's classes and
paths and refuses every other global (a pickle can otherwise call any function). From an ``ImgFolder`` config (or the
``dataset`` field naming an image folder) the image list is rebuilt in the order saev recorded it: torchvision's
``ImageFolder`` order (class folders sorted, files sorted within each, walked recursively, its image extensions). From
an ``ImgSegFolder`` config (``root/images/<split>``, masks in ``root/annotations``, ``root/<labels_csv>`` with a
``stem`` column then label columns) the images are those of the split in the same order, and an image's class is its
first label column's value, numbered as saev numbers it (the column's distinct values, sorted).
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import io
import os
import pathlib
import pickle
from typing import Any

# torchvision.datasets.folder.IMG_EXTENSIONS, which saev's ImgFolder uses
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_PATH_CLASSES = {("pathlib", n) for n in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")} | {
    ("pathlib._local", n) for n in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")}


class SaevConfig:
    """A stand-in for one of saev's dataset-config objects: its class name and fields, nothing executed."""

    saev_class = ""
    fields: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> SaevConfig:  # NEWOBJ passes the class's constructor arguments
        obj = object.__new__(cls)
        obj.fields = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        # plain dataclass: a dict; slots dataclass: (None, {slot: value}) or (dict, slots)
        if isinstance(state, tuple):
            merged: dict[str, Any] = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            state = merged
        self.fields = dict(state) if isinstance(state, dict) else {"state": state}


def _path(*parts: str) -> str:
    return str(pathlib.PurePath(*parts))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PATH_CLASSES:
            return _path
        if module == "saev" or module.startswith("saev."):
            return type(name, (SaevConfig,), {"saev_class": f"{module}.{name}"})
        raise pickle.UnpicklingError(f"refused {module}.{name} (only saev's dataset configs and paths are read)")


@dataclasses.dataclass(frozen=True)
class DataField:
    """The decoded ``data`` field: ``kind`` (saev's class name, or ``dict`` for saev-ops' own) and its fields."""

    kind: str
    fields: dict[str, Any]


def read_data_field(data: str) -> tuple[DataField | None, str]:
    """(the decoded field, "") or (None, why it could not be read)."""
    if not data:
        return None, "the data field is empty"
    try:
        raw = base64.b64decode(data, validate=True)
        obj = _Unpickler(io.BytesIO(raw)).load()
    except (binascii.Error, ValueError) as exc:
        return None, f"the data field is not base64 ({exc})"
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, IndexError) as exc:
        return None, f"the data field does not unpickle safely ({exc})"
    if isinstance(obj, SaevConfig):
        return DataField(obj.saev_class.rsplit(".", 1)[-1], obj.fields), ""
    if isinstance(obj, dict):
        return DataField("dict", obj), ""
    return None, f"the data field holds a {type(obj).__name__}, not a dataset config"


@dataclasses.dataclass(frozen=True)
class ImageList:
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]


def image_folder(root: pathlib.Path) -> ImageList:
    """torchvision's ``ImageFolder`` listing of ``root``: (paths, class index, class name) in its order."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    paths, labels, names = [], [], []
    for target, cls in enumerate(classes):
        found = _image_files(root / cls)
        paths += found
        labels += [target] * len(found)
        names += [cls] * len(found)
    return ImageList(tuple(paths), tuple(labels), tuple(names))


def _image_files(folder: pathlib.Path) -> list[str]:
    """The image files under ``folder`` in torchvision's order: directories walked sorted, links followed, each
    directory's files sorted, kept by ``IMG_EXTENSIONS``."""
    return [os.path.join(dirpath, f) for dirpath, _, fnames in sorted(os.walk(folder, followlinks=True))
            for f in sorted(fnames) if f.lower().endswith(IMG_EXTENSIONS)]


def recorded_images(data: str, dataset: str, n_examples: int) -> tuple[ImageList | None, str]:
    """The images a saev directory was recorded from, in example order, or (None, why not): from an ``ImgFolder`` or
    ``ImgSegFolder`` config in ``data``, else from the ``dataset`` field when it names an image folder; the count must
    equal ``n_examples``."""
    field, why = read_data_field(data)
    reasons = [why] if why else []
    roots: list[str] = []
    if field is not None and field.kind == "ImgSegFolder" and field.fields.get("root"):
        seg, seg_why = seg_folder(pathlib.Path(str(field.fields["root"])), str(field.fields.get("split", "training")),
                                  str(field.fields.get("labels_csv", "labels.csv")))
        if seg is not None and len(seg.paths) == n_examples:
            return seg, ""
        reasons.append(seg_why or f"{field.fields['root']}: {len(seg.paths) if seg else 0} images in ImgSegFolder "
                       f"order, metadata.json says {n_examples}")
    elif field is not None and field.kind == "ImgFolder" and field.fields.get("root"):
        roots.append(str(field.fields["root"]))
    elif field is not None:
        reasons.append(f"saev dataset config {field.kind} does not list image files")
    if dataset and not (field is not None and field.kind == "ImgSegFolder"):  # its root is not an image folder
        roots.append(dataset)
    for root in dict.fromkeys(roots):
        p = pathlib.Path(root)
        if any(c in root for c in "*?["):
            reasons.append(f"{root}: a glob pattern (saev concatenates its matches in file-system order)")
        elif not p.is_dir():
            reasons.append(f"{root}: not a directory here")
        else:
            listing = image_folder(p)
            if len(listing.paths) == n_examples:
                return listing, ""
            reasons.append(f"{root}: {len(listing.paths)} images in ImageFolder order, metadata.json says {n_examples}")
    return None, "; ".join(reasons) or "no image folder named"


def seg_folder(root: pathlib.Path, split: str, labels_csv: str = "labels.csv") -> tuple[ImageList | None, str]:
    """saev's ``ImgSegFolder`` listing: the images of ``root/images/<split>`` in torchvision's order, each with its
    first label column's class from ``root/<labels_csv>`` (None and why, where that cannot be read)."""

    split_dir = root / "images" / split
    if not split_dir.is_dir():
        return None, f"{split_dir}: not a directory here"
    paths = _image_files(split_dir)
    csv_path = root / labels_csv
    try:
        with open(csv_path, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            if not columns or columns[0] != "stem":
                return None, f"{csv_path}: its first column is {columns[:1]}, saev's ImgSegFolder needs 'stem'"
            rows = {row["stem"]: row for row in reader}
    except OSError as exc:
        return None, f"{csv_path}: cannot read ({exc.strerror})"
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    missing = [s for s in stems if s not in rows]
    if missing:
        return None, f"{csv_path}: no row for {len(missing)} image(s), e.g. {missing[0]!r}"
    if len(columns) < 2:
        return ImageList(tuple(paths), tuple(-1 for _ in paths), tuple("" for _ in paths)), ""
    col = columns[1]
    numbering = {v: i for i, v in enumerate(sorted({row[col] for row in rows.values()}))}
    names = tuple(rows[s][col] for s in stems)
    return ImageList(tuple(paths), tuple(numbering[n] for n in names), names), ""

"""The on-disk layout of an activation dataset: saev's protocol 2.1 files plus saev-ops' own sidecar files.

saev's files (``metadata.json``, ``shards.json``, ``acts000000.bin`` ..., optional ``labels.bin``) are written exactly
as saev writes them, so saev reads saev-ops datasets and saev-ops imports saev directories. saev-ops adds, beside them:

- ``index.lmdb/``     LMDB: example id -> shard, row, image path, label (see :mod:`saev_ops.shards.index`)
- ``saev_ops.json``   schema version, storage dtype, token layout, per-shard checksums, quantisation error, ``complete``
- ``stats.npz``       per-layer mean, mean norm and the normalisation scale used for training
- ``.progress.json``  the writer's resume state (deleted once the dataset is complete)

A directory is complete only when ``saev_ops.json`` says so; it is written last, by rename.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import pathlib
import pickle
from typing import Any

from saev_ops import errors, tokens

PROTOCOL = "2.1"
SIDECAR_SCHEMA = 1
SAEV_FAMILIES = ("bird-mae", "clip", "dinov2", "dinov3", "fake-clip", "pe-core", "pe-spatial", "siglip")
DEFAULT_MAX_TOKENS_PER_SHARD = 2_000_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class Metadata:
    """saev's ``metadata.json``, field for field and in saev's order (the order feeds the directory hash)."""

    family: str
    ckpt: str
    layers: tuple[int, ...]
    content_tokens_per_example: int
    cls_token: bool
    d_model: int
    n_examples: int
    max_tokens_per_shard: int
    data: str
    dataset: str
    pixel_agg: str = "majority"
    dtype: str = "float32"
    protocol: str = PROTOCOL

    def __post_init__(self) -> None:
        problems = []
        if not self.layers:
            problems.append("layers must not be empty")
        for name in ("d_model", "max_tokens_per_shard"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.content_tokens_per_example < 0 or self.tokens_per_example <= 0:
            problems.append(f"need content_tokens_per_example >= 0 and at least one token per example, got "
                            f"{self.content_tokens_per_example} (cls_token={self.cls_token})")
        if self.n_examples < 0:
            problems.append(f"n_examples must be >= 0, got {self.n_examples}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            problems.append(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.max_tokens_per_shard < self.tokens_per_example * len(self.layers):
            problems.append(
                f"max_tokens_per_shard ({self.max_tokens_per_shard}) is smaller than one example "
                f"({self.tokens_per_example} tokens x {len(self.layers)} layers)"
            )
        if problems:
            raise errors.ConfigError("invalid dataset metadata: " + "; ".join(problems))

    @property
    def tokens_per_example(self) -> int:
        return self.content_tokens_per_example + (1 if self.cls_token else 0)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def examples_per_shard(self) -> int:
        return self.max_tokens_per_shard // (self.tokens_per_example * self.n_layers)

    @property
    def n_shards(self) -> int:
        return -(-self.n_examples // self.examples_per_shard) if self.n_examples else 0

    def shard_n_examples(self, shard: int) -> int:
        s = self.examples_per_shard
        return min(s, self.n_examples - shard * s)

    def to_json_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    def canonical_json(self) -> str:
        """Compact JSON in field order, as saev serialises it for its hash."""
        return json.dumps(self.to_json_dict(), separators=(",", ":"))

    @property
    def content_hash(self) -> str:
        """Full SHA-256 of :meth:`canonical_json`; its first 8 hex characters are saev's directory name."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def hash(self) -> str:
        return self.content_hash[:8]

    @classmethod
    def from_json_dict(cls, d: dict[str, Any], *, source: str = "metadata.json") -> Metadata:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing fields {missing}")
            if unknown:
                parts.append(f"unknown fields {unknown}")
            raise errors.DataError(f"{source}: {'; '.join(parts)} (expected saev protocol {PROTOCOL} fields {names})")
        try:
            return cls(**{**d, "layers": tuple(int(x) for x in d["layers"])})
        except (TypeError, ValueError, errors.ConfigError) as exc:
            raise errors.DataError(f"{source}: {exc}") from None


def encode_data_field(source: dict[str, Any]) -> str:
    """saev's ``data`` field is base64 of a pickled dataset-config object that saev's loaders never read.

    saev-ops writes a pickled plain dict describing the image source (protocol 4), which unpickles anywhere.
    """
    return base64.b64encode(pickle.dumps(dict(source), protocol=4)).decode()


def shard_name(i: int) -> str:
    return f"acts{i:06d}.bin"


@dataclasses.dataclass(frozen=True)
class ShardPaths:
    """Every path inside a dataset directory. Nothing else joins these names."""

    root: pathlib.Path

    @property
    def metadata(self) -> pathlib.Path:
        return self.root / "metadata.json"

    @property
    def shards_json(self) -> pathlib.Path:
        return self.root / "shards.json"

    @property
    def labels(self) -> pathlib.Path:
        return self.root / "labels.bin"

    @property
    def index(self) -> pathlib.Path:
        return self.root / "index.lmdb"

    @property
    def sidecar(self) -> pathlib.Path:
        return self.root / "saev_ops.json"

    @property
    def stats(self) -> pathlib.Path:
        return self.root / "stats.npz"

    @property
    def progress(self) -> pathlib.Path:
        return self.root / ".progress.json"

    @property
    def parts(self) -> pathlib.Path:
        """The parts of a recording split across jobs, while they are written (:class:`saev_ops.split.Parts`)."""
        return self.root / "parts"

    def shard(self, i: int) -> pathlib.Path:
        return self.root / shard_name(i)

    def shard_tmp(self, i: int) -> pathlib.Path:
        return self.root / (shard_name(i) + ".tmp")

    def patch_labels_part(self, i: int) -> pathlib.Path:
        """Shard ``i``'s patch labels while a write is in progress (joined into labels.bin at the end)."""
        return self.root / f".labels{i:06d}.npy"


def dataset_dir(data_root: pathlib.Path, short_hash: str) -> pathlib.Path:
    """saev's layout: ``<root>/saev/shards/<hash>`` (saev refuses other paths)."""
    return data_root / "saev" / "shards" / short_hash


def read_json(path: pathlib.Path) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise errors.DataError(f"{path}: missing file") from None
    except json.JSONDecodeError as exc:
        raise errors.DataError(f"{path}: not valid JSON ({exc})") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenLayout:
    """Where the special tokens sit on the token axis: CLS first (saev), then registers, then patches."""

    n_cls: int
    n_registers: int
    n_patches: int

    @property
    def n_tokens(self) -> int:
        return self.n_cls + self.n_registers + self.n_patches

    @property
    def name(self) -> str:
        """The ``--tokens`` choice that stores this layout (``all`` = CLS, registers and patches)."""
        if self.n_registers:
            return "all"
        if self.n_cls and self.n_patches:
            return "cls+patches"
        return "patches" if self.n_patches else "cls"

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> TokenLayout:
        """From a sidecar's or registry row's ``token_layout`` (the counts; other keys describe them)."""
        return cls(n_cls=int(d["n_cls"]), n_registers=int(d["n_registers"]), n_patches=int(d["n_patches"]))

    def to_json_dict(self) -> dict[str, Any]:
        """As the sidecar stores it: the counts, the layout's name and whether saev reads it right (saev knows CLS
        and patches only; register rows would count as patches)."""
        return {"n_cls": self.n_cls, "n_registers": self.n_registers, "n_patches": self.n_patches, "name": self.name,
                "saev_compatible": self.n_registers == 0}

    def indices(self, which: str) -> list[int]:
        """Token indices of a selection of :data:`saev_ops.tokens.SELECTIONS` (an old name too)."""
        cls_ids = list(range(self.n_cls))
        reg_ids = list(range(self.n_cls, self.n_cls + self.n_registers))
        patch_ids = list(range(self.n_cls + self.n_registers, self.n_tokens))
        table = {
            "all": cls_ids + reg_ids + patch_ids,
            "patches": patch_ids,
            "cls": cls_ids,
            "special": cls_ids + reg_ids,
            "cls+patches": cls_ids + patch_ids,
        }
        which = tokens.canonical(which)
        if not table[which]:
            raise errors.ConfigError(f"tokens={which!r} selects nothing: this dataset's layout is {self}")
        return table[which]

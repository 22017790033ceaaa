"""Running activation statistics, accumulated shard by shard (so a resumed write combines partial sums exactly)."""

from __future__ import annotations

import dataclasses
import pathlib
import zipfile
from typing import Any

import numpy as np

from saev_ops import atomic, errors


@dataclasses.dataclass
class StatsAccumulator:
    """Per-layer sums over every stored token, plus the error that reduced-precision storage costs.

    ``scale`` is the factor that makes the mean token norm equal sqrt(d_model); trainers multiply activations by it
    (and save it with the checkpoint).
    """

    n_layers: int
    d_model: int
    n_tokens: int = 0
    sum: np.ndarray = None  # type: ignore[assignment]  # filled with zeros in __post_init__ unless given
    sum_sq: np.ndarray = None  # type: ignore[assignment]  # per layer, a scalar each; as above
    sum_norm: np.ndarray = None  # type: ignore[assignment]  # as above
    err_sq: float = 0.0
    rel_err_sum: float = 0.0
    n_nonfinite: int = 0

    def __post_init__(self) -> None:
        if self.sum is None:
            self.sum = np.zeros((self.n_layers, self.d_model), dtype=np.float64)
            self.sum_sq = np.zeros(self.n_layers, dtype=np.float64)
            self.sum_norm = np.zeros(self.n_layers, dtype=np.float64)

    def update(self, acts: np.ndarray, stored: np.ndarray | None = None) -> None:
        """``acts``: float32 (n, L, T, D); ``stored``: the same values after storage rounding (None for float32).

        The sums are folded in example by example, in order, from per-example sums of a fixed shape: the totals
        depend on the examples and their order only, not on how they were batched, so a resumed write or a range
        recorded by another job gives the same bits as one uninterrupted write."""
        finite = np.isfinite(acts)
        if not finite.all():
            self.n_nonfinite += int((~finite).sum())
            acts = np.where(finite, acts, 0.0)
            if stored is not None:
                stored = np.where(finite, stored, 0.0)
        self.n_tokens += acts.shape[0] * acts.shape[2]
        for i in range(acts.shape[0]):
            x = acts[i].astype(np.float64)  # (L, T, D)
            sq = np.einsum("ltd,ltd->lt", x, x)
            norms = np.sqrt(sq)
            self.sum += x.sum(axis=1)
            self.sum_sq += sq.sum(axis=1)
            self.sum_norm += norms.sum(axis=1)
            if stored is not None:
                diff = x - stored[i].astype(np.float64)
                err = np.einsum("ltd,ltd->lt", diff, diff)
                self.err_sq += float(err.sum())
                self.rel_err_sum += float((np.sqrt(err) / np.maximum(norms, 1e-12)).sum())

    def merge(self, other: StatsAccumulator) -> None:
        self.n_tokens += other.n_tokens
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.sum_norm += other.sum_norm
        self.err_sq += other.err_sq
        self.rel_err_sum += other.rel_err_sum
        self.n_nonfinite += other.n_nonfinite

    def to_json(self) -> dict[str, Any]:
        return {
            "n_tokens": self.n_tokens,
            "sum": self.sum.tolist(),
            "sum_sq": self.sum_sq.tolist(),
            "sum_norm": self.sum_norm.tolist(),
            "err_sq": self.err_sq,
            "rel_err_sum": self.rel_err_sum,
            "n_nonfinite": self.n_nonfinite,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], n_layers: int, d_model: int) -> StatsAccumulator:
        return cls(
            n_layers=n_layers,
            d_model=d_model,
            n_tokens=d["n_tokens"],
            sum=np.asarray(d["sum"], dtype=np.float64).reshape(n_layers, d_model),
            sum_sq=np.asarray(d["sum_sq"], dtype=np.float64),
            sum_norm=np.asarray(d["sum_norm"], dtype=np.float64),
            err_sq=d["err_sq"],
            rel_err_sum=d["rel_err_sum"],
            n_nonfinite=d["n_nonfinite"],
        )

    def summary(self) -> dict[str, Any]:
        """Mean, mean norm, scale per layer; quantisation error (NMSE against the float32 variance, relative L2)."""
        n = max(self.n_tokens, 1)  # tokens per layer
        mean = self.sum / n
        mean_norm = self.sum_norm / n
        total_var = float(self.sum_sq.sum() - n * (mean**2).sum())
        return {
            "mean": mean.astype(np.float32),
            "mean_norm": mean_norm.astype(np.float32),
            "scale": (np.sqrt(self.d_model) / np.maximum(mean_norm, 1e-12)).astype(np.float32),
            "n_tokens": self.n_tokens,
            "storage_nmse": self.err_sq / total_var if total_var > 0 else 0.0,
            "storage_rel_err": self.rel_err_sum / (n * self.n_layers),
            "n_nonfinite": self.n_nonfinite,
        }


def save_stats(path: pathlib.Path, summary: dict[str, Any], layers: tuple[int, ...]) -> None:
    with atomic.atomic_file(path) as tmp:  # stats.tmp.npz: numpy keeps a name that ends in .npz
        np.savez(tmp, mean=summary["mean"], mean_norm=summary["mean_norm"], scale=summary["scale"],
                 layers=np.asarray(layers, dtype=np.int64), n_tokens=np.int64(summary["n_tokens"]))


def load_stats(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The arrays of ``stats.npz``; a truncated or otherwise unreadable file is a DataError naming it."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise errors.DataError(f"{path}: missing statistics (re-import the dataset)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise errors.DataError(f"{path}: unreadable statistics ({type(exc).__name__}: {exc}); re-import the dataset "
                               "or record it again") from None

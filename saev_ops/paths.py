"""Every directory saev-ops lays out, built in one place (what goes where is in the README's "Where things go").

Roots come from :mod:`saev_ops.settings` (the home directory) or from the user (``runs_root:``, ``--out-root``,
``--data-root``); everything below a root is named here and nowhere else, so two commands cannot disagree on where a
run's files are.
"""

from __future__ import annotations

import hashlib
import pathlib

from saev_ops.settings import home_dir

JOURNAL_NAME = "metrics.jsonl"


def default_runs_root(sweep: str | None) -> pathlib.Path:
    """``<home>/runs/<sweep name>`` (``adhoc`` for runs of no sweep)."""
    return home_dir() / "runs" / (sweep or "adhoc")


def run_dir(runs_root: str | pathlib.Path, run_id: int) -> pathlib.Path:
    """A run's own files: its SAE (``sae/``) and its journal (``metrics.jsonl``)."""
    return pathlib.Path(runs_root) / f"run-{run_id:06d}"


def sae_dir(runs_root: str | pathlib.Path, run_id: int) -> pathlib.Path:
    """A run's SAE files (``weights.safetensors``, ``config.json``): what inference and export read."""
    return run_dir(runs_root, run_id) / "sae"


def run_journals(runs_root: str | pathlib.Path) -> list[pathlib.Path]:
    """The journals of every run under ``runs_root``, sorted."""
    return sorted(pathlib.Path(runs_root).glob(f"run-*/{JOURNAL_NAME}"))


def job_dir(runs_root: str | pathlib.Path, job_key: str) -> pathlib.Path:
    """A training job's checkpoint (``ckpt/``), shared by its runs."""
    return pathlib.Path(runs_root) / "jobs" / job_key


def candidates_file(runs_root: str | pathlib.Path, dataset_hash: str, layer: int, tokens: str,
                    n: int) -> pathlib.Path:
    """The candidate points of the archetypal SAEs of a sweep's layer (``n`` k-means centroids of its dataset's
    ``layer``/``tokens`` activations): computed once, read by every job of the sweep that trains one."""
    return pathlib.Path(runs_root) / "candidates" / f"{dataset_hash}-layer{layer}-{tokens}-{n}.safetensors"


def submitit_dir(runs_root: str | pathlib.Path) -> pathlib.Path:
    """submitit's pickles and the job logs of a sweep (one sub-folder per job id)."""
    return pathlib.Path(runs_root) / "submitit"


def default_outputs_root() -> pathlib.Path:
    return home_dir() / "outputs"


def output_dir(out_root: str | pathlib.Path, run_id: int, dataset_hash: str) -> pathlib.Path:
    """An inference output of a run over a dataset (CSR ``latents.npz``, statistics, ``output.json``)."""
    return pathlib.Path(out_root) / f"run-{run_id:06d}" / f"infer-{dataset_hash[:12]}"


def latent_index_dir(output_path: str | pathlib.Path) -> pathlib.Path:
    """An output's index from each latent to its rows (``serve`` builds it once, beside the output it derives from)."""
    return pathlib.Path(output_path) / "by_latent"


def latent_index_cache_dir(output_path: str | pathlib.Path) -> pathlib.Path:
    """Where that index goes when the output's own directory is read-only: ``<home>/cache/by_latent/<digest>``, the
    digest of the output's resolved path."""

    digest = hashlib.blake2b(str(pathlib.Path(output_path).resolve()).encode(), digest_size=10).hexdigest()
    return home_dir() / "cache" / "by_latent" / digest


def infer_parts_dir(out_root: str | pathlib.Path, key: str) -> pathlib.Path:
    """The parts of an inference pass split across jobs (``infer --jobs N``), while they are written."""
    return pathlib.Path(out_root) / ".parts" / key[:16]


def job_logs_root(kind: str) -> pathlib.Path:
    """Logs of single record/infer jobs submitted to Slurm: ``<home>/jobs/<kind>/<job id>``."""
    return home_dir() / "jobs" / kind

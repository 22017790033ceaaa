"""Inference: stream a dataset once in order, apply one or many trained SAEs, write each one's latents as a scipy CSR
``.npz`` (rows = example x token, columns = latents) plus per-latent statistics, and register it.

Memory stays bounded: each block of rows is appended to raw ``indices``/``data`` files on disk, and the ``.npz`` is
assembled from those files (memory-mapped) at the end, in scipy's ``save_npz`` layout. Everything is written into a
temporary directory that is renamed into place, and only then registered. An existing output is a no-op unless
``force``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import shutil
from typing import Any

import numpy as np

from saev_ops import atomic, errors, paths
from saev_ops.infer import provenance
from saev_ops.paths import job_logs_root
from saev_ops.progress import Progress
from saev_ops.registry import DatasetRecord, OutputRecord, Registry, RunRecord
from saev_ops.shards.reader import ShardReader
from saev_ops.split import Parts, split_ranges

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InferSpec:
    db_url: str
    run_ids: tuple[int, ...]
    dataset: str
    out_root: str
    batch_size: int = 16384
    device: str = "cpu"
    force: bool = False
    allow_model_mismatch: bool = False
    """Apply SAEs whose training data came from another model, preprocessing or token layout (logged, recorded)."""


SEGMENT_BATCHES = 8
"""Batches per metric segment: reconstruction sums are kept per segment of this many batches and folded in order, so
a pass split across jobs (whose ranges are whole segments) gives the same bits as one job."""


class _CsrWriter:
    """One SAE's latents over consecutive rows, appended to raw files in ``folder`` (bounded memory)."""

    def __init__(self, folder: pathlib.Path, d_sae: int) -> None:
        self.folder = folder
        self.d_sae = d_sae
        self.indices = open(folder / "indices.bin", "wb")
        self.data = open(folder / "data.bin", "wb")
        self.counts: list[np.ndarray] = []
        self.nnz = 0

    def add(self, z: np.ndarray) -> None:
        rows, cols = np.nonzero(z)
        self.indices.write(cols.astype(np.int32).tobytes())
        self.data.write(z[rows, cols].astype(np.float32).tobytes())
        self.counts.append(np.bincount(rows, minlength=z.shape[0]).astype(np.int64))
        self.nnz += len(cols)

    def close(self) -> None:
        """Close the raw files and keep the per-row counts beside them (``row_nnz.npy``)."""
        if self.indices.closed:
            return
        self.indices.close()
        self.data.close()
        np.save(self.folder / "row_nnz.npy", np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64))

    def finish(self, n_rows: int) -> dict[str, Any]:
        self.close()
        return assemble_csr(self.folder, [self.folder], n_rows, self.d_sae)


STATS_BLOCK = 1 << 22  # entries of the CSR arrays per step of the latent statistics


def assemble_csr(out: pathlib.Path, parts: list[pathlib.Path], n_rows: int, d_sae: int) -> dict[str, Any]:
    """``latents.npz`` (scipy's ``save_npz`` layout), ``latent_stats.npz`` and ``row_l0.npy`` in ``out`` from the raw
    files of consecutive row ranges (``parts``, in order; ``[out]`` itself for one). The statistics are computed from
    the whole arrays in fixed blocks, so they do not depend on how the rows were split."""
    if parts != [out]:
        for name in ("indices.bin", "data.bin"):
            with open(out / name, "wb") as dst:
                for part in parts:
                    with open(part / name, "rb") as src:
                        shutil.copyfileobj(src, dst, 16 << 20)
    counts = np.concatenate([np.load(part / "row_nnz.npy") for part in parts])
    if len(counts) != n_rows:
        raise errors.DataError(f"{out}: the parts hold {len(counts)} rows, expected {n_rows}")
    nnz = int(counts.sum())
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.memmap(out / "indices.bin", dtype=np.int32, mode="r", shape=(nnz,)) if nnz else np.zeros(0, np.int32)
    data = np.memmap(out / "data.bin", dtype=np.float32, mode="r", shape=(nnz,)) if nnz else np.zeros(0, np.float32)
    freq = np.zeros(d_sae, dtype=np.int64)
    total = np.zeros(d_sae, dtype=np.float64)
    top = np.zeros(d_sae, dtype=np.float32)
    for a in range(0, nnz, STATS_BLOCK):
        cols, vals = np.asarray(indices[a:a + STATS_BLOCK]), np.asarray(data[a:a + STATS_BLOCK])
        freq += np.bincount(cols, minlength=d_sae)
        total += np.bincount(cols, weights=vals, minlength=d_sae)
        np.maximum.at(top, cols, vals)
    # scipy.sparse.save_npz's layout, so scipy.sparse.load_npz reads it
    np.savez(out / "latents.npz", indices=indices, indptr=indptr, format=np.array("csr"),
             shape=np.array([n_rows, d_sae]), data=data)
    del indices, data
    for name in ("indices.bin", "data.bin", "row_nnz.npy"):
        (out / name).unlink(missing_ok=True)  # a part's files stay with the part
    np.savez(out / "latent_stats.npz", frequency=freq / max(n_rows, 1),
             mean=(total / np.maximum(freq, 1)).astype(np.float32), max=top, count=freq)
    np.save(out / "row_l0.npy", counts.astype(np.int32))
    return {"n_rows": n_rows, "nnz": nnz}


def check_inference(reg: Registry, spec: InferSpec) -> tuple[DatasetRecord, list[RunRecord]]:
    """What can be checked before any work (:func:`saev_ops.infer.provenance.usable_runs`)."""
    return provenance.usable_runs(reg, spec.run_ids, spec.dataset, allow=spec.allow_model_mismatch,
                                  purpose="weights to apply")


@dataclasses.dataclass
class _Sae:
    run_id: int
    sae: Any
    meta: dict[str, Any]

    @property
    def group(self) -> tuple[int, str]:
        return int(self.meta["layer"]), str(self.meta.get("tokens", "patches"))


def _load_saes(reg: Registry, spec: InferSpec, dataset: DatasetRecord, runs: list[RunRecord]) -> list[_Sae]:
    import torch

    from saev_ops.sae.io import load_sae

    out = []
    for run in runs:
        assert run.checkpoint_path is not None  # check_inference refused runs without one
        sae, meta = load_sae(pathlib.Path(run.checkpoint_path), spec.device)
        if not all(bool(torch.isfinite(p).all()) for p in sae.parameters()):
            raise errors.DataError(f"run {run.id}: the SAE at {run.checkpoint_path} has non-finite weights; retrain it")
        if sae.cfg.d_model != dataset.d_model:
            raise errors.ConfigError(f"run {run.id}: SAE d_model {sae.cfg.d_model} != dataset's {dataset.d_model}")
        s = _Sae(run.id, sae, meta)
        if s.group[0] not in dataset.layers:
            raise errors.ConfigError(f"the SAE of run {run.id} reads layer {s.group[0]}, which dataset "
                                     f"{dataset.name!r} does not have (layers {list(dataset.layers)})")
        out.append(s)
    return out


def _todo(reg: Registry, spec: InferSpec, dataset: DatasetRecord, runs: list[RunRecord]
          ) -> tuple[list[RunRecord], list[OutputRecord]]:
    """The runs whose output is still to compute, and the outputs kept (all of them again with ``force``)."""
    todo, kept = [], []
    for run in runs:
        existing = reg.find_output(run.id, dataset.id)
        if existing is not None and not spec.force and pathlib.Path(existing.path).exists():
            kept.append(existing)
        else:
            todo.append(run)
    return todo, kept


def examples_per_batch(spec: InferSpec, dataset: DatasetRecord, saes: list[_Sae]) -> int:
    """Every batch holds whole examples, the same number for every SAE: ``batch_size`` rows of the widest token
    selection (at least one example)."""
    from saev_ops.loaders.selection import ShardSelection, plan

    reader = ShardReader(dataset.path)
    try:
        widest = max(plan(reader, ShardSelection(layers=(layer,), tokens=tokens)).rows_per_example
                     for layer, tokens in {s.group for s in saes})
    finally:
        reader.close()
    return max(1, spec.batch_size // widest)


def _apply(spec: InferSpec, dataset: DatasetRecord, saes: list[_Sae], folders: dict[int, pathlib.Path],
           lo: int, hi: int, per_batch: int) -> dict[int, dict[str, Any]]:
    """Apply ``saes`` to examples ``[lo, hi)`` in order: each SAE's latents go to its folder as raw CSR parts; returns
    per run the rows, the reconstruction sums of each metric segment and the latents' firing counts."""
    import torch

    from saev_ops.loaders import OrderedConfig, OrderedDataLoader, ShardSelection
    from saev_ops.loaders.feed import DeviceFeed
    from saev_ops.loaders.selection import plan
    from saev_ops.sae.evaluate import ReconMetrics

    segment = per_batch * SEGMENT_BATCHES
    results: dict[int, dict[str, Any]] = {}
    groups: dict[tuple[int, str], list[_Sae]] = {}
    for s in saes:
        groups.setdefault(s.group, []).append(s)
    for (layer, tokens), items in groups.items():
        sel = ShardSelection(layers=(layer,), tokens=tokens)
        reader = ShardReader(dataset.path)
        rpe = plan(reader, sel).rows_per_example
        feed = DeviceFeed(spec.device)
        loader = OrderedDataLoader(reader, OrderedConfig(selection=sel, batch_size=per_batch * rpe, start=lo, stop=hi,
                                                         pin_memory=feed.pin_memory))
        writers = {s.run_id: _CsrWriter(folders[s.run_id], s.sae.cfg.d_sae) for s in items}
        seg = {s.run_id: ReconMetrics(s.sae.cfg.d_sae, spec.device) for s in items}
        segments: dict[int, list[dict[str, Any]]] = {s.run_id: [] for s in items}
        fired = {s.run_id: np.zeros(s.sae.cfg.d_sae, np.int64) for s in items}
        bar = Progress(f"inference, runs {[s.run_id for s in items]}", loader.n_rows, "rows", log)
        try:
            with bar, torch.inference_mode():
                for batch in loader:
                    x = feed(batch)
                    _refuse_nonfinite(batch, x, dataset)
                    for s in items:
                        xs = x.float() * float(s.meta["scale"])
                        z = s.sae.encode(xs)
                        seg[s.run_id].add(xs, s.sae.decode(z), z)
                        writers[s.run_id].add(z.float().cpu().numpy())
                    bar.update(bar.done + x.shape[0])
                    end = lo + (bar.done // rpe)
                    if end % segment == 0 or end == hi:  # a segment ends (ranges start on segment bounds)
                        for s in items:
                            segments[s.run_id].append(seg[s.run_id].sums())
                            fired[s.run_id] += seg[s.run_id].fired.cpu().numpy()
                            seg[s.run_id] = ReconMetrics(s.sae.cfg.d_sae, spec.device)
        finally:
            feed.close()
            for w in writers.values():
                w.close()
        for s in items:
            results[s.run_id] = {"n_rows": loader.n_rows, "segments": segments[s.run_id], "fired": fired[s.run_id],
                                 "layer": layer, "tokens": tokens, "rows_per_example": rpe,
                                 "token_idx": loader.plan.token_idx.tolist()}
    return results


def _metrics(d_sae: int, parts: list[dict[str, Any]]) -> dict[str, float | None]:
    """The reconstruction metrics of a whole pass from its parts' segments, folded in order."""
    import torch

    from saev_ops.sae.evaluate import ReconMetrics

    total = ReconMetrics(d_sae, "cpu")
    for part in parts:
        for seg_sums in part["segments"]:
            total.fold(seg_sums)
        total.fired += torch.from_numpy(np.asarray(part["fired"], dtype=np.int64))
    return total.result()


def _register(reg: Registry, dataset: DatasetRecord, s: _Sae, final: pathlib.Path, parts: list[dict[str, Any]],
              info: dict[str, Any], tmp: pathlib.Path) -> OutputRecord:
    """output.json, the directory in place, the registry row."""
    metrics = _metrics(s.sae.cfg.d_sae, parts)
    first = parts[0]
    layer, tokens = first["layer"], first["tokens"]
    atomic.write_text(tmp / "output.json", json.dumps({
        "run_id": s.run_id, "dataset": dataset.name, "dataset_hash": dataset.content_hash, "layer": layer,
        "tokens": tokens, "rows": "example-major: row = example * tokens_selected + token position",
        "tokens_per_example": first["rows_per_example"], "token_idx": first["token_idx"],
        "metrics": metrics, **info}, indent=2))
    atomic.replace_dir(tmp, final)
    mismatch = provenance.mismatches(reg.get_dataset_by_id(reg.get_run(s.run_id).dataset_id), dataset, tokens=tokens)
    return reg.add_output(run_id=s.run_id, dataset=dataset.name, path=str(final), n_rows=info["n_rows"],
                          n_cols=s.sae.cfg.d_sae, nnz=info["nnz"], metrics=metrics,
                          extra={"layer": layer, "tokens": tokens,
                                 **({"model_mismatch": mismatch} if mismatch else {})}, replace=True)


def run_inference(spec: InferSpec) -> list[OutputRecord]:
    """Apply the runs' SAEs to the dataset in one ordered pass; returns the registered outputs."""
    reg = Registry(spec.db_url)
    dataset, runs = check_inference(reg, spec)
    todo, out = _todo(reg, spec, dataset, runs)
    if not todo:
        return out
    saes = _load_saes(reg, spec, dataset, todo)
    tmps = {s.run_id: (atomic.fresh_dir(_tmp_of(spec, s.run_id, dataset)), _final_of(spec, s.run_id, dataset))
            for s in saes}
    try:
        results = _apply(spec, dataset, saes, {rid: t for rid, (t, _) in tmps.items()}, 0, dataset.n_examples,
                         examples_per_batch(spec, dataset, saes))
        for s in saes:
            tmp, final = tmps[s.run_id]
            info = assemble_csr(tmp, [tmp], results[s.run_id]["n_rows"], s.sae.cfg.d_sae)
            out.append(_register(reg, dataset, s, final, [results[s.run_id]], info, tmp))
    except BaseException:
        for tmp, _ in tmps.values():
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind
        raise
    return out


def _final_of(spec: InferSpec, run_id: int, dataset: DatasetRecord) -> pathlib.Path:
    return paths.output_dir(spec.out_root, run_id, dataset.content_hash)


def _tmp_of(spec: InferSpec, run_id: int, dataset: DatasetRecord) -> pathlib.Path:
    final = _final_of(spec, run_id, dataset)
    return final.with_name(final.name + ".tmp")


# -- a pass split across jobs -----------------------------------------------------------------------------------------
def _split_key(spec: InferSpec, dataset: DatasetRecord, run_ids: list[int]) -> str:
    return hashlib.sha256(json.dumps({"dataset": dataset.content_hash, "runs": sorted(run_ids),
                                      "batch_size": spec.batch_size}).encode()).hexdigest()


def plan_split(spec: InferSpec, n_jobs: int, *, submission: bool = True) -> tuple[InferSpec, int, list[int]]:
    """Split the pass into at most ``n_jobs`` example ranges of whole metric segments (the split of the first
    submission is kept). Returns the spec the jobs run (the runs still without an output), the number of parts and the
    parts still to do (none: nothing to compute). A ``submission`` clears a final-step claim that a dead job left."""
    reg = Registry(spec.db_url)
    dataset, runs = check_inference(reg, spec)
    todo, _ = _todo(reg, spec, dataset, runs)
    if not todo:
        return spec, 0, []
    job_spec = dataclasses.replace(spec, run_ids=tuple(r.id for r in todo), force=True)
    saes = _load_saes(reg, spec, dataset, todo)
    unit = examples_per_batch(spec, dataset, saes) * SEGMENT_BATCHES
    parts = _parts(job_spec, dataset)
    ranges = parts.plan(_split_key(job_spec, dataset, list(job_spec.run_ids)),
                        split_ranges(dataset.n_examples, unit, n_jobs))
    if submission:
        parts.clear_claim()
    return job_spec, len(ranges), parts.unfinished(len(ranges))


def _parts(spec: InferSpec, dataset: DatasetRecord) -> Parts:
    return Parts(paths.infer_parts_dir(spec.out_root, _split_key(spec, dataset, list(spec.run_ids))))


def infer_part(spec: InferSpec, task: int) -> list[OutputRecord] | None:
    """Part ``task`` of a split pass (``spec`` as :func:`plan_split` returned it); the job that finishes the last
    part joins the parts into one registered output per SAE and returns them, the others return None."""
    reg = Registry(spec.db_url, hold_connections=False)
    dataset, runs = check_inference(reg, spec)
    parts = _parts(spec, dataset)
    ranges = parts.read_plan(_split_key(spec, dataset, list(spec.run_ids)))
    if not 0 <= task < len(ranges):
        raise errors.ConfigError(f"part {task}: this pass is split into {len(ranges)} parts (0-{len(ranges) - 1})")
    saes = _load_saes(reg, spec, dataset, runs)
    if parts.done(task) is None:
        lo, hi = ranges[task]
        folder = parts.fresh_part(task)
        folders = {s.run_id: folder / f"run-{s.run_id:06d}" for s in saes}
        for f in folders.values():
            f.mkdir()
        results = _apply(spec, dataset, saes, folders, lo, hi, examples_per_batch(spec, dataset, saes))
        parts.mark_done(task, {str(rid): {**r, "fired": r["fired"].tolist(),
                                          "segments": [{k: np.asarray(v).tolist() for k, v in seg.items()}
                                                       for seg in r["segments"]]}
                               for rid, r in results.items()})
        log.info("inference part %d of %d done (examples %d-%d)", task, len(ranges), lo, hi - 1)
    if not parts.claim_finish(len(ranges)):
        return None
    try:
        out = []
        done = [parts.done(i) or {} for i in range(len(ranges))]
        for s in saes:
            final = _final_of(spec, s.run_id, dataset)
            tmp = atomic.fresh_dir(_tmp_of(spec, s.run_id, dataset))
            per_part = [d[str(s.run_id)] for d in done]
            info = assemble_csr(tmp, [parts.part_dir(i) / f"run-{s.run_id:06d}" for i in range(len(ranges))],
                                sum(r["n_rows"] for r in per_part), s.sae.cfg.d_sae)
            out.append(_register(reg, dataset, s, final, per_part, info, tmp))
        parts.remove()
        return out
    except BaseException:
        parts.clear_claim()  # a rerun of any part (or the submission) joins them again
        raise


def _refuse_nonfinite(batch: Any, x: Any, dataset: DatasetRecord) -> None:
    """Latents of non-finite inputs are garbage that looks like data: stop, naming the examples."""
    import torch

    from saev_ops.loaders.selection import examples_of

    finite_rows = torch.isfinite(x).all(dim=1)
    if bool(finite_rows.all()):
        return
    raise errors.DataError(f"dataset {dataset.name!r} ({dataset.path}) holds non-finite activations in examples "
                           f"{examples_of(batch, ~finite_rows)}; no output was written "
                           f"(`saev-ops datasets verify {dataset.name} --full`)")


def infer_split(spec: InferSpec, n_jobs: int) -> list[OutputRecord]:
    """The pass as ``n_jobs`` parts at once, one process each on this machine, joined into the outputs one job
    writes (byte for byte). A rerun computes only the parts that did not finish."""
    from saev_ops.infer.jobs import InferPartJob
    from saev_ops.jobs import run_in_processes

    job_spec, n_parts, todo = plan_split(spec, n_jobs)
    if todo:
        run_in_processes("inference", [InferPartJob(job_spec, i) for i in todo])
    elif n_parts:
        _join_finished(job_spec)
    return _registered_outputs(spec)


@dataclasses.dataclass(frozen=True)
class SplitSubmission:
    """Parts of a split pass submitted to Slurm: (job id, array index) per part, of ``n_parts`` for ``n_runs`` runs."""

    jobs: list[tuple[str | None, int | None]]
    n_parts: int
    n_runs: int


def submit_split(spec: InferSpec, n_jobs: int, slurm: Any) -> SplitSubmission | list[OutputRecord]:
    """Submit the unfinished parts of the pass split into ``n_jobs`` as a Slurm array (the last part to finish joins
    them), or return the outputs when nothing is left to compute (joining finished parts here if they were not)."""
    from saev_ops.infer.jobs import InferPartJob
    from saev_ops.jobs import submit

    job_spec, n_parts, todo = plan_split(spec, n_jobs)
    if not todo:
        if n_parts:
            _join_finished(job_spec)
        return _registered_outputs(spec)
    jobs = submit("slurm", job_logs_root("infer"), f"infer-{spec.dataset}",
                  [InferPartJob(job_spec, i) for i in todo], slurm)
    return SplitSubmission(jobs, n_parts, len(job_spec.run_ids))


def _join_finished(job_spec: InferSpec) -> None:
    """Every part finished and the join did not (its job died): join them here."""
    if infer_part(job_spec, 0) is None:
        raise errors.JobFailedError("every inference part is done but another job holds the final step")


def _registered_outputs(spec: InferSpec) -> list[OutputRecord]:
    """The outputs of ``spec``'s runs; a run without one after its parts finished is an error."""
    reg = Registry(spec.db_url)
    dataset, runs = check_inference(reg, spec)
    out = [reg.find_output(r.id, dataset.id) for r in runs]
    missing = [r.id for r, o in zip(runs, out, strict=True) if o is None]
    if missing:
        raise errors.JobFailedError(f"every inference part finished but runs {missing} have no output on "
                                    f"{dataset.name!r}")
    return [o for o in out if o is not None]

"""The multi-SAE training pass: one shuffled data stream, many SAEs, metrics to the registry, checkpoints, resume.

Every run of a job trains on the same batches (different widths, k, learning rates and architectures alike), so the
data pass (the expensive part) is shared. The job's checkpoint -- every SAE's weights and optimiser state, the loader's
state and the step -- is one directory written atomically; a requeued or rerun job continues from it, and the final
weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import socket
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from saev_ops import atomic, errors, paths
from saev_ops.jobs import Job
from saev_ops.loaders import IndexedDataset, ShardSelection, ShuffledConfig, ShuffledDataLoader
from saev_ops.loaders.feed import DeviceFeed
from saev_ops.loaders.selection import examples_of
from saev_ops.progress import Progress
from saev_ops.sae import build_sae
from saev_ops.sae.config import ArchetypalConfig
from saev_ops.sae.evaluate import reconstruction_metrics
from saev_ops.sae.io import save_sae
from saev_ops.shards import ShardReader
from saev_ops.train import candidates
from saev_ops.train.metrics import Window
from saev_ops.train.spec import TrainJobSpec

if TYPE_CHECKING:
    from saev_ops.registry import Registry
    from saev_ops.sae.modules import SAE
    from saev_ops.train.journal import Journal

CKPT_SCHEMA = 1
VAL_SEED = 0  # the held-out sample's rows: the same for every job and attempt
SCALE_SEED, SCALE_SAMPLE = 1, 65_536  # the rows whose centred norm sets the scale (scale_by: centred-norm)
# How long the preemption handler waits for the registry. The signal may land while this very thread holds a write
# transaction (SQLite's write lock, a PostgreSQL row lock): a write from the handler then waits for a lock only the
# interrupted code can release, so it must not wait long. Slurm's grace period after USR2 is commonly 60-120 s.
REQUEUE_MARK_WAIT_S = 5.0
log = logging.getLogger(__name__)


def run_dir(spec: TrainJobSpec, run_id: int) -> pathlib.Path:
    return paths.run_dir(spec.runs_root, run_id)


def job_dir(spec: TrainJobSpec) -> pathlib.Path:
    return paths.job_dir(spec.runs_root, spec.key)


def lr_factor(step: int, settings: Any) -> float:
    if step < settings.lr_warmup_steps:
        return (step + 1) / settings.lr_warmup_steps
    if settings.lr_decay == "none":
        return 1.0
    span = max(1, settings.n_steps - settings.lr_warmup_steps)
    t = min(1.0, (step - settings.lr_warmup_steps) / span)
    return 0.5 * (1 + math.cos(math.pi * t)) if settings.lr_decay == "cosine" else 1.0 - t


def _slurm_ids() -> tuple[str | None, int | None]:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return array_job, int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    return os.environ.get("SLURM_JOB_ID"), None


class Trainer:
    """Train the runs of ``spec``. ``registry`` may be None (metrics then go to files only)."""

    def __init__(self, spec: TrainJobSpec, registry: Registry | None) -> None:
        self.spec = spec
        self.registry = registry
        self.device = torch.device(spec.settings.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~8x fp32 throughput on Ampere and later
        self.reader = ShardReader(spec.dataset_path)
        selection = ShardSelection(layers=(spec.layer,), tokens=spec.tokens)
        self.rows = IndexedDataset(self.reader, selection)
        """The job's selected rows by index: the samples drawn before training (scale, data init, candidates)."""
        layer_idx = self.reader.layer_index(spec.layer)
        stats = self.reader.stats()
        s = spec.settings
        mean = torch.from_numpy(stats["mean"][layer_idx]).float()
        self.scale = float(stats["scale"][layer_idx]) if s.scale_by == "norm" else self._centred_scale(mean)
        center = mean * self.scale
        self.feed = DeviceFeed(self.device)
        self.loader = ShuffledDataLoader(self.reader, ShuffledConfig(
            selection=selection, batch_size=s.batch_size, seed=s.seed,
            buffer_mb=s.buffer_mb, drop_last=True, pin_memory=self.feed.pin_memory))
        if len(self.loader) == 0:
            raise errors.ConfigError(f"batch_size {s.batch_size} is larger than the dataset's "
                                     f"{self.loader.n_rows} selected patches")
        self.saes = []
        self.opts = []
        centred = self._init_sample(center) if s.data_init_blend > 0 else None
        for r in spec.runs:
            if r.sae.d_model != self.reader.d_model:
                raise errors.ConfigError(f"run {r.run_id}: d_model {r.sae.d_model} != dataset's {self.reader.d_model}")
            sae = build_sae(r.sae, seed=r.seed)
            sae.init_bias(center)
            if centred is not None:
                g = torch.Generator().manual_seed(r.seed)
                sae.init_from_data(centred[torch.randperm(len(centred), generator=g)], s.data_init_blend, g)
            sae.to(self.device)
            self.saes.append(sae)
            self.opts.append(torch.optim.Adam(sae.parameters(), lr=r.lr, betas=(0.9, 0.999)))
        self._set_candidates(mean)
        self.val_x = self._val_sample() if s.val_dataset is not None else None
        self.step = 0

    def _set_candidates(self, mean: torch.Tensor) -> None:
        """Give the archetypal SAEs their candidates: one tensor on the device per number of candidates, shared."""
        archetypal = [(sae, sae.cfg.n_candidates) for sae in self.saes if isinstance(sae.cfg, ArchetypalConfig)]
        wanted = sorted({n for _, n in archetypal})
        for n in wanted:
            points = candidates.load_or_compute(
                self.rows, runs_root=self.spec.runs_root, dataset_hash=self.spec.dataset_hash, layer=self.spec.layer,
                tokens=self.spec.tokens, n=n, mean=mean, device=self.device) * self.scale
            for sae, its_n in archetypal:
                if its_n == n:
                    sae.set_candidates(points)  # type: ignore[operator]  # an archetypal SAE has it

    def _val_sample(self) -> torch.Tensor:
        """The held-out rows every evaluation of this job reads (training scale, on the device): ``val_tokens`` rows
        of the job's layer and tokens, drawn without replacement with a fixed seed, so every evaluation and every job
        of a sweep sees the same rows."""

        s = self.spec.settings
        if self.spec.val_dataset_path is None:
            raise errors.ConfigError(f"val_dataset {s.val_dataset!r}: the job was planned without its path")
        reader = ShardReader(self.spec.val_dataset_path)
        if reader.d_model != self.reader.d_model:
            raise errors.ConfigError(f"val_dataset {s.val_dataset!r}: d_model {reader.d_model} != "
                                     f"{self.reader.d_model}")
        ds = IndexedDataset(reader, self.rows.selection)
        n = min(len(ds), s.val_tokens)
        idx = np.sort(np.random.default_rng(VAL_SEED).choice(len(ds), size=n, replace=False))
        return (ds.get_batch(idx)["act"].float() * self.scale).to(self.device)

    def evaluate(self, journal: Journal, failed: dict[int, str]) -> None:
        """Held-out metrics of every SAE still training, as ``val/...`` points at the current step."""

        assert self.val_x is not None
        for run, sae in zip(self.spec.runs, self.saes, strict=True):
            if run.run_id in failed:
                continue
            metrics = reconstruction_metrics(sae, self.val_x, self.spec.settings.batch_size)
            journal.log(run.run_id, self.step, {f"val/{k}": v for k, v in metrics.items() if v is not None})

    def _centred_scale(self, mean: torch.Tensor) -> float:
        """sqrt(d_model) over the mean norm of the selected rows minus ``mean``, on a fixed sample of at most
        :data:`SCALE_SAMPLE` rows (the same in every attempt: a resumed job scales as the first did)."""
        n = min(len(self.rows), SCALE_SAMPLE)
        idx = np.sort(np.random.default_rng(SCALE_SEED).choice(len(self.rows), size=n, replace=False))
        norm = float((self.rows.get_batch(idx)["act"].float() - mean).norm(dim=1).mean())
        if not math.isfinite(norm) or norm <= 0:
            raise errors.DataError(f"{self.spec.dataset_path}: layer {self.spec.layer}'s activations have no spread "
                                   f"about their mean (centred norm {norm}); use scale_by: norm")
        return math.sqrt(self.reader.d_model) / norm

    def _init_sample(self, center: torch.Tensor) -> torch.Tensor:
        """Centred activations (training scale) for data-point initialisation: as many as the widest SAE has latents,
        drawn without replacement from the selected rows with the data seed, independent of the training order."""
        n = min(len(self.rows), max(r.sae.d_sae for r in self.spec.runs))
        rng = np.random.default_rng(self.spec.settings.seed)
        idx = np.sort(rng.choice(len(self.rows), size=n, replace=False))  # sampled without a permutation of every row
        rows = self.rows.get_batch(idx)["act"].float() * self.scale
        return rows - center

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> pathlib.Path:
        jd = job_dir(self.spec)
        tmp = atomic.fresh_dir(jd / "ckpt.tmp")
        state = {"schema": CKPT_SCHEMA, "step": self.step, "loader": self.loader.state_dict(),
                 "runs": [r.run_id for r in self.spec.runs],
                 "saes": [s.state_dict() for s in self.saes], "opts": [o.state_dict() for o in self.opts]}
        torch.save(state, tmp / "state.pt")
        final = jd / "ckpt"
        atomic.replace_dir(tmp, final)
        for r, sae in zip(self.spec.runs, self.saes, strict=True):  # the per-run SAE that inference reads
            save_sae(sae, paths.sae_dir(self.spec.runs_root, r.run_id), scale=self.scale,
                     dataset_hash=self.spec.dataset_hash, layer=self.spec.layer,
                     extra={"run_id": r.run_id, "step": self.step, "tokens": self.spec.tokens})
        return final

    def load_checkpoint(self) -> bool:
        ckpt = atomic.existing_dir(job_dir(self.spec) / "ckpt")  # .old if a crash fell between the two renames
        path = ckpt / "state.pt" if ckpt is not None else None
        if path is None or not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("schema") != CKPT_SCHEMA or state["runs"] != [r.run_id for r in self.spec.runs]:
            raise errors.DataError(f"{path}: checkpoint of other runs ({state.get('runs')}) or schema; remove it")
        self.step = state["step"]
        self.loader.load_state_dict(state["loader"])
        for sae, opt, sd, od in zip(self.saes, self.opts, state["saes"], state["opts"], strict=True):
            sae.load_state_dict(sd)
            opt.load_state_dict(od)
        return True

    # -- the pass ------------------------------------------------------------------------------------------------------
    def train(self, journal: Journal | None = None) -> dict[int, str]:
        """Train to ``n_steps``, reporting to ``journal`` (default: one over this trainer's registry and run
        directories). Returns run id -> error for runs that failed on their own (non-finite loss or weights); the
        others trained to the end. A batch with non-finite activations fails every run (raises DataError)."""

        if journal is None:
            journal = _journal(self.spec, self.registry)
        s = self.spec.settings
        windows = [Window(sae.cfg.d_sae, self.device) for sae in self.saes]
        failed: dict[int, str] = {}
        last_beat = 0.0
        window_start = self.step
        progress = Progress(f"runs {[r.run_id for r in self.spec.runs]}", s.n_steps, "steps", log,
                            rate_unit="patches", rate_per_item=s.batch_size, start=self.step)
        detail = ""
        held: tuple[int, Any, torch.Tensor] | None = None  # the previous step's batch and its finiteness, checked late
        batches = self.loader.stream()  # epoch after epoch, its threads and buffers never restarted
        while self.step < s.n_steps and len(failed) < len(self.saes):
            batch = next(batches)
            x = self.feed(batch) * self.scale
            # the squared norm must be finite for any loss to be: catches NaN, Inf and values like 1e30 alike; read one
            # step later, so the device is not waited on here
            finite = torch.isfinite(x.pow(2).sum())
            if held is not None:
                self._check_batch(*held)
            held = (self.step + 1, batch, finite)
            factor = lr_factor(self.step, s)
            self._step(x, factor, windows, failed)
            self.step += 1
            if self.step % s.log_every == 0 or self.step == s.n_steps:
                self._check_batch(*held)
                held = None
                detail = self._report(journal, windows, failed, factor, window_start)
                window_start = self.step
            if self.val_x is not None and (self.step % s.eval_every == 0 or self.step == s.n_steps):
                self.evaluate(journal, failed)
            progress.update(self.step, detail)
            if self.step % s.ckpt_every == 0 and self.step < s.n_steps:
                self.save_checkpoint()
            if self.registry is not None and time.monotonic() - last_beat > s.heartbeat_s:
                last_beat = time.monotonic()
                self._heartbeat()
        batches.close()
        self.feed.close()
        progress.close()
        if held is not None:
            self._check_batch(*held)
        for run, sae in zip(self.spec.runs, self.saes, strict=True):  # nothing non-finite is ever called completed
            if run.run_id not in failed and _nonfinite({}, sae):
                failed[run.run_id] = f"run {run.run_id}: non-finite weights at step {self.step}"
        self.save_checkpoint()
        return failed

    def _step(self, x: torch.Tensor, factor: float, windows: list[Any], failed: dict[int, str]) -> None:
        """One optimiser step of every SAE still training, on the same batch ``x``; each adds to its window."""
        sparsity = min(1.0, (self.step + 1) / max(1, self.spec.settings.sparsity_warmup_steps))
        for run, sae, opt, win in zip(self.spec.runs, self.saes, self.opts, windows, strict=True):
            if run.run_id in failed:
                continue
            for group in opt.param_groups:
                group["lr"] = run.lr * factor
            x_hat, z, terms = sae.train_step(x, opt, sparsity, self.spec.settings.grad_clip)
            win.add(x, x_hat.detach(), z.detach(), {k: v.detach() for k, v in terms.items()})

    def _report(self, journal: Journal, windows: list[Any], failed: dict[int, str], factor: float,
                window_start: int) -> str:
        """Log each training run's window of metrics and start a new one; a run whose loss or weights became
        non-finite joins ``failed`` (the others go on). Returns the progress line's detail."""
        parts: list[str] = []
        for run, sae, win in zip(self.spec.runs, self.saes, windows, strict=True):
            if run.run_id in failed:
                continue
            report = win.report(float(sae.dead_mask().float().mean()))
            report["lr"] = run.lr * factor
            journal.log(run.run_id, self.step, report)
            win.reset()
            parts.append(f"run {run.run_id}: loss {report.get('loss', float('nan')):.4g}, L0 {report['l0']:.1f}")
            problem = _nonfinite(report, sae)
            if problem:
                failed[run.run_id] = (f"run {run.run_id}: non-finite {problem} in steps {window_start + 1}-"
                                      f"{self.step} (finite inputs; lower the learning rate, now "
                                      f"{run.lr * factor:.3g})")
                log.error("%s; the job's other runs go on", failed[run.run_id])
        return "; ".join(parts[:4]) + (f"; +{len(parts) - 4} runs" if len(parts) > 4 else "")

    def _heartbeat(self) -> None:
        """Tell the registry the job's runs are alive; a miss is logged and survived (the next beat may land)."""
        assert self.registry is not None
        try:
            self.registry.heartbeat([r.run_id for r in self.spec.runs])
        except errors.RegistryError as exc:
            log.warning("heartbeat of runs %s missed: %s", [r.run_id for r in self.spec.runs], exc)

    def _check_batch(self, step: int, batch: Any, finite: torch.Tensor) -> None:
        if bool(finite):
            return

        act = batch["act"].float() * self.scale
        bad_rows = ~torch.isfinite(act.pow(2).sum(dim=1))
        raise errors.DataError(
            f"non-finite activations (NaN/Inf, or too large for float32 after scaling) in the batch of step {step}: "
            f"{int(bad_rows.sum())} rows of examples {examples_of(batch, bad_rows)} of dataset {self.spec.dataset!r} "
            f"({self.spec.dataset_path}); `saev-ops datasets verify {self.spec.dataset} --full` lists the shards"
        )


def _nonfinite(report: dict[str, float], sae: SAE) -> str | None:
    """What is non-finite: a reported loss term, or the SAE's weights (one device sync per SAE)."""
    bad = sorted(k for k, v in report.items() if not math.isfinite(v))
    if bad:
        return f"{', '.join(bad)}"
    with torch.no_grad():
        if not bool(torch.stack([torch.isfinite(p).all() for p in sae.parameters()]).all()):
            return "weights"
    return None


def _journal(spec: TrainJobSpec, registry: Registry | None) -> Journal:
    """The job's journal over its runs' directories (created here)."""
    from saev_ops.train.journal import Journal

    run_dirs = {r.run_id: run_dir(spec, r.run_id) for r in spec.runs}
    registry_id, identities = spec.registry_id, {r.run_id: r.identity for r in spec.runs}
    if registry is not None:
        if registry_id and registry.registry_id != registry_id:
            raise errors.ConfigError(
                f"runs {sorted(run_dirs)} were planned in registry {registry_id}, but {registry!r} is registry "
                f"{registry.registry_id}: the job's database URL reaches another registry; nothing was trained")
        registry_id = registry.registry_id
        identities = {rid: h or registry.get_run(rid).config_hash for rid, h in identities.items()}
    for d in run_dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return Journal(registry, run_dirs, registry_id=registry_id, identities=identities)


def _open_registry(db_url: str) -> Any:
    from saev_ops.registry import Registry

    try:
        return Registry(db_url, hold_connections=False)  # a connection only while writing: 100s of jobs, few slots
    except errors.RegistryError as exc:
        log.warning("registry unreachable at job start (%s); metrics and statuses go to the runs' %s files until "
                    "`saev-ops sweep sync`", exc, paths.JOURNAL_NAME)
        return None


def run_train_job(spec: TrainJobSpec) -> dict[int, str]:
    """Do a training job in this process: mark runs running, train, mark them completed (or failed with the error).
    When the registry is unreachable, statuses and metrics are journaled to files (:mod:`saev_ops.train.journal`).

    Returns run id -> final SAE directory of the runs that completed.
    """
    registry = _open_registry(spec.db_url)
    job_id, array_index = _slurm_ids()
    ids = [r.run_id for r in spec.runs]
    journal = _journal(spec, registry)
    run_dirs = journal.run_dirs
    fields: dict[str, Any] = {"host": socket.gethostname()}
    if job_id:
        fields.update(executor="slurm", slurm_job_id=job_id, slurm_array_index=array_index)
    started: list[int] = []
    for rid in ids:
        try:
            journal.transition(rid, "running", run_dir=str(run_dirs[rid]), **fields)
        except errors.InvalidTransitionError as exc:  # cancelled (or finished) since the job was queued
            log.warning("%s: this job does not train its runs %s", exc, ids)
            for other in started:
                journal.transition(other, "queued")  # as they were
            return {}
        started.append(rid)
    try:
        trainer = Trainer(spec, registry)
        if trainer.load_checkpoint():  # said in the job's log, so a requeued attempt shows where it picked up
            log.info("runs %s resumed from %s at step %d of %d", ids, job_dir(spec) / "ckpt", trainer.step,
                     spec.settings.n_steps)
        failed = trainer.train(journal)
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            text = "".join(traceback.format_exception(exc))[-8000:]
            for rid in ids:
                try:
                    journal.transition(rid, "failed", error=text)
                except errors.SaevOpsError as inner:
                    log.warning("run %d: could not record its failure: %s", rid, inner)
        raise
    out = {}
    for r in spec.runs:
        if r.run_id in failed:
            journal.transition(r.run_id, "failed", error=failed[r.run_id])
            continue
        path = str(run_dirs[r.run_id] / "sae")
        out[r.run_id] = path
        journal.transition(r.run_id, "completed", checkpoint_path=path)
    if failed:
        raise errors.TrainingError("; ".join(failed.values()))
    return out


class TrainJob(Job):
    """The callable submitit runs. Preempted or timed out, it marks its runs queued (without waiting on the registry
    past :data:`REQUEUE_MARK_WAIT_S`) and is submitted again; the new attempt resumes from the last checkpoint."""

    def __init__(self, spec: TrainJobSpec) -> None:
        self.spec = spec

    def run(self) -> dict[int, str]:
        return run_train_job(self.spec)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        mark_queued_bounded(self.spec.db_url, [r.run_id for r in self.spec.runs], REQUEUE_MARK_WAIT_S)
        return super().checkpoint(*args, **kwargs)


def mark_queued_bounded(db_url: str, run_ids: list[int], wait_s: float) -> bool:
    """Mark ``run_ids`` queued for a requeued attempt, waiting at most ``wait_s`` for the registry; True if done.

    Runs in the preemption handler, which interrupts the main thread wherever it is, possibly inside a registry write.
    The mark is made from a helper thread and the handler stops waiting after ``wait_s``: the requeue must happen
    within the cluster's grace period. Runs left ``running`` are taken over by the requeued attempt all the same
    (``running`` to ``running`` is allowed); what is lost is the attempt count, and the warning says so.
    """
    problems: list[str] = []

    def mark() -> None:
        registry = _open_registry(db_url)
        if registry is None:
            problems.append("registry unreachable")
            return
        try:
            for rid in run_ids:
                try:
                    registry.transition_run(rid, "queued")
                except errors.SaevOpsError as exc:
                    problems.append(f"run {rid}: {exc}")
        finally:
            registry.close()

    worker = threading.Thread(target=mark, name="saev-ops-requeue-mark", daemon=True)
    worker.start()
    worker.join(wait_s)
    if worker.is_alive():
        log.warning("runs %s: the registry did not answer within %.0f s of the preemption signal (the signal may have "
                    "interrupted a registry write of this process); they stay `running`, the requeued attempt takes "
                    "them over, and this attempt is not counted", run_ids, wait_s)
        return False
    for problem in problems:
        log.warning("could not mark a run queued for the requeued attempt: %s", problem)
    return not problems

"""``sweep submit``: validate, expand, dedupe by config hash, register, group into jobs, launch."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
from typing import Any

from saev_ops import errors, paths
from saev_ops.host import Room
from saev_ops.jobs import PartialSubmissionError, SlurmSpec, submit
from saev_ops.registry import DatasetRecord, Registry, RunQuery, RunRecord, config_hash
from saev_ops.runconfig import NEW_SWEEP_SETTINGS, RUN_ONLY_SETTINGS, RunConfig, TrainSettings
from saev_ops.sae.config import (
    FAMILIES,
    NEW_SWEEP_DEFAULTS,
    PURSUITS,
    ArchetypalConfig,
    MPConfig,
    OMPConfig,
    SAEConfig,
)
from saev_ops.sweeps.spec import Resources, SweepSpec
from saev_ops.train.spec import RunSpec, TrainJobSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PlannedJob:
    layer: int
    tokens: str
    run_ids: tuple[int, ...]
    configs: tuple[RunConfig, ...]
    memory_gb: float
    identities: tuple[str, ...] = ()
    """Each run's identity in the registry (its config hash, named on its journal's lines), once known."""

    def identified(self, hashes: dict[int, str]) -> PlannedJob:
        """The job with its runs' identities from ``hashes`` (run id -> config hash)."""
        return dataclasses.replace(self, identities=tuple(hashes[r] for r in self.run_ids))


@dataclasses.dataclass(frozen=True)
class SubmitResult:
    sweep: str
    n_runs: int
    new_runs: tuple[int, ...]
    resubmitted: tuple[int, ...]
    jobs: tuple[PlannedJob, ...]
    job_ids: tuple[str | None, ...]
    dry_run: bool
    warnings: tuple[str, ...] = ()
    """What will make a metric meaningless (a dead window longer than the run) or a job slow (loader groups larger
    than its memory), said before anything trains."""


def estimate_memory_gb(sae: SAEConfig, d_model: int, batch_size: int) -> float:
    """Parameters with grads and two Adam moments, plus what a step holds besides: the encoder (one linear map, or an
    MLP and its batch of hidden units; none for the pursuits) and the decoder of each family. Most families: the
    decoder and the batch's latent activations (pre, z and their grads). Matching pursuit: z, a correlation product,
    and the ``k`` residuals and chosen atoms its backward keeps; orthogonal pursuit (no graph through it): a step's
    chosen atoms and their Gram matrices. An archetypal SAE: archetype weights (d_sae x candidates) and relaxation in
    place of the decoder, the dictionary they make and its grad, and the candidates themselves (counted for each such
    run, though the runs of a job that share them hold one copy)."""
    d_sae, hidden = sae.d_sae, sae.encoder_hidden
    encoder = d_model * hidden + hidden + hidden * d_sae if hidden else d_model * d_sae
    encoder = 0 if sae.arch in PURSUITS else encoder + d_sae
    decoder = d_model * d_sae + d_model
    held = batch_size * d_sae * 4 * 4 + batch_size * hidden * 4 * 3
    if isinstance(sae, MPConfig):
        held = batch_size * d_sae * 4 * 3 + sae.k * batch_size * d_model * 4 * 3
    elif isinstance(sae, OMPConfig):
        held = batch_size * d_sae * 4 * 3 + batch_size * sae.k * (d_model + sae.k) * 4 * 2
    elif isinstance(sae, ArchetypalConfig):
        n = sae.n_candidates
        decoder = d_sae * n + d_sae * d_model + 1 + d_model
        held += 2 * d_sae * d_model * 4 + n * d_model * 4
    return ((encoder + decoder) * 4 * 4 + held) / 2**30


def run_memory_gb(rid: int, cfg: RunConfig, d_model: int, settings: TrainSettings,
                  resources: Resources) -> float:
    """The device memory run ``rid`` (a negative id: one not registered yet) needs, or a ConfigError naming it where
    that is more than one job's ``device_memory_gb``."""
    mem = estimate_memory_gb(cfg.sae, d_model, settings.batch_size)
    if mem > resources.device_memory_gb:
        which = f"run {rid}" if rid >= 0 else "a run"
        raise errors.ConfigError(f"{which} ({cfg.sae.to_dict()}) needs about {mem:.1f} GB, more than "
                                 f"resources.device_memory_gb={resources.device_memory_gb}")
    return mem


def group_runs(items: list[tuple[int, RunConfig]], d_model: int, settings: TrainSettings,
               resources: Resources) -> list[PlannedJob]:
    """Runs that share layer and tokens share a job, split so each job's SAEs fit ``device_memory_gb`` and at most
    ``max_runs_per_job`` runs. Greedy, largest first."""
    by_key: dict[tuple[int, str], list[tuple[int, RunConfig, float]]] = {}
    cap, room = resources.max_runs_per_job, resources.device_memory_gb
    for rid, cfg in items:
        mem = run_memory_gb(rid, cfg, d_model, settings, resources)
        by_key.setdefault((cfg.layer, cfg.tokens), []).append((rid, cfg, mem))
    jobs = []
    for (layer, tokens), members in sorted(by_key.items()):
        members.sort(key=lambda m: -m[2])
        bins: list[list[tuple[int, RunConfig, float]]] = []
        open_bins: list[tuple[list[tuple[int, RunConfig, float]], list[float]]] = []  # (bin, [memory used])
        for m in members:  # first fit over the bins with room left (full ones leave the list: linear in runs)
            for i, (b, used) in enumerate(open_bins):
                if used[0] + m[2] <= room:
                    b.append(m)
                    used[0] += m[2]
                    if len(b) >= cap:
                        del open_bins[i]
                    break
            else:
                bins.append([m])
                if cap > 1:
                    open_bins.append((bins[-1], [m[2]]))
        for b in bins:
            b.sort(key=lambda m: m[0])
            jobs.append(PlannedJob(layer, tokens, tuple(m[0] for m in b), tuple(m[1] for m in b),
                                   sum(m[2] for m in b)))
    return jobs


def runs_root_for(spec: SweepSpec) -> pathlib.Path:
    return pathlib.Path(spec.runs_root) if spec.runs_root else paths.default_runs_root(spec.name)


def bind_configs(spec: SweepSpec, d_model: int) -> list[RunConfig]:
    """The sweep's run configs, one per identity: entries that differ only in what their architecture does not
    read (a ReLU entry picking up a zipped ``k``) are one run."""

    out, seen = [], set()
    for entry in spec.configs:
        cfg = RunConfig.from_entry(entry, d_model, spec.settings)
        key = json.dumps(cfg.identity(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def submit_sweep(registry: Registry, spec: SweepSpec, db_url: str, *, dry_run: bool = False,
                 retry_failed: bool = False) -> SubmitResult:
    """Register the sweep's runs (existing configs are not duplicated) and launch the new ones (and, with
    ``retry_failed``, failed, lost and cancelled ones). Nothing is written when validation fails or with ``dry_run``."""
    from saev_ops.datasets import require_complete

    dataset = require_complete(registry, spec.dataset)
    spec = keep_first_defaults(registry, spec)
    configs = bind_configs(spec, dataset.d_model)
    check_batch_size(configs, dataset, spec.settings.batch_size)
    for cfg in configs:  # the layer must exist in the dataset
        if cfg.layer != -1 and cfg.layer not in dataset.layers:
            raise errors.ConfigError(f"layer {cfg.layer} is not recorded in dataset {dataset.name!r} "
                                     f"(layers {list(dataset.layers)})")
    val = held_out(registry, spec.settings, dataset, configs)
    # every refusal before the first write: a run too large for one job is refused here, not after it is registered
    for i, cfg in enumerate(configs):
        run_memory_gb(-(i + 1), cfg, dataset.d_model, spec.settings, spec.resources)
    if dry_run:
        hashes = [config_hash(dataset.content_hash, cfg.identity()) for cfg in configs]
        known = registry.runs_by_hash(hashes)
        fresh = [(-(i + 1), cfg) for i, (cfg, h) in enumerate(zip(configs, hashes, strict=True)) if h not in known]
        ident = {-(i + 1): h for i, h in enumerate(hashes)}
        jobs = [j.identified(ident) for j in group_runs(fresh, dataset.d_model, spec.settings, spec.resources)]
        return SubmitResult(spec.name, len(configs), tuple(r for r, _ in fresh), (), tuple(jobs), (), True,
                            window_warnings(configs) + page_cache_warnings(spec, dataset, selections(configs))
                            + held_out_warnings(registry, spec, list(known.values())))

    registry.get_or_create_sweep(spec.name, spec.text)
    added = registry.add_runs(spec.dataset, [c.stored() for c in configs], sweep=spec.name,
                              identities=[c.identity() for c in configs])
    new = [(r.id, cfg) for (r, created), cfg in zip(added, configs, strict=True) if created]
    # runs a refused submission left pending (queued, never handed to an executor) and, with retry_failed, runs that
    # ended without completing: as their rows stored them
    new += [(r.id, RunConfig.from_stored(r.config)) for r, created in added
            if not created and r.status == "queued" and r.executor is None]
    retried: list[tuple[int, RunConfig]] = []
    if retry_failed:
        retried = [(r.id, RunConfig.from_stored(r.config))
                   for r in requeue_ended(registry, [r for r, created in added if not created])]
    todo = new + retried
    ident = {r.id: r.config_hash for r, _ in added}
    jobs = [j.identified(ident) for j in group_runs(todo, dataset.d_model, spec.settings, spec.resources)]
    job_ids = launch(registry, spec, dataset, jobs, db_url, val)
    return SubmitResult(spec.name, len(configs), tuple(r for r, _ in new), tuple(r for r, _ in retried), tuple(jobs),
                        tuple(job_ids), False, window_warnings(configs)
                        + page_cache_warnings(spec, dataset, selections(configs))
                        + held_out_warnings(registry, spec, [r for r, created in added if not created]))


def held_out_warnings(registry: Registry, spec: SweepSpec, existing: list[RunRecord]) -> tuple[str, ...]:
    """Runs that exist already (a val_dataset is not part of what a run learns, so adding one trains nothing new) but
    were trained without this val_dataset: where they are, and the command that scores them on it."""
    val = spec.settings.val_dataset
    without = [r for r in existing if (r.config.get("train") or {}).get("val_dataset") != val]
    if val is None or not without:
        return ()
    names = {s.id: s.name for s, _ in registry.list_sweeps()}
    sweeps = sorted({names.get(r.sweep_id, "no sweep") for r in without if r.sweep_id is not None})
    where = ", ".join(sweeps) or "no sweep"
    how = "; ".join(f"`saev-ops infer {s} --dataset {val}`" for s in sweeps) or f"`saev-ops infer RUN --dataset {val}`"
    return (f"{len(without)} run(s) exist already in sweep {where}, trained without val_dataset {val!r} (a held-out "
            f"dataset is not part of what a run learns, so they are not trained again)\n  {how} gives them held-out "
            "metrics",)


def keep_first_defaults(registry: Registry, spec: SweepSpec) -> SweepSpec:
    """``spec`` with the defaults its first submission had, where its grid leaves them unset: a resubmitted sweep keeps
    what it was first given, so a default that changed since (such as ``buffer_mb``, part of a run's identity) does
    not turn its runs into new ones. Settings the grid names win. The SAE fields of
    :data:`~saev_ops.sae.config.NEW_SWEEP_DEFAULTS` and the settings of
    :data:`~saev_ops.runconfig.NEW_SWEEP_SETTINGS` get their new value in a new sweep and in a sweep that has runs
    what its runs were given (an SAE field: what its first run of a family with the field stored, :func:`_first_value`;
    a run stores only its own family's fields)."""

    try:
        registry.get_sweep(spec.name)
        first = registry.list_runs(RunQuery(sweep=spec.name, limit=1))
    except errors.NotFoundError:
        first = []
    fill = {k: _first_value(registry, spec.name, k, new, old) if first else new
            for k, (new, old) in NEW_SWEEP_DEFAULTS.items()}
    configs = tuple({**{k: v for k, v in fill.items() if k not in cfg}, **cfg} for cfg in spec.configs)
    spec = dataclasses.replace(spec, configs=configs)
    if not first:
        new = {k: v for k, v in NEW_SWEEP_SETTINGS.items() if k not in spec.settings.model_fields_set}
        return dataclasses.replace(spec, settings=spec.settings.model_copy(update=new)) if new else spec
    stored = first[0].run.config.get("train", {})
    given = spec.settings.model_fields_set
    kept = {k: v for k, v in stored.items() if k in TrainSettings.model_fields and k not in given
            and k not in RUN_ONLY_SETTINGS and v != getattr(spec.settings, k)}
    if not kept:
        return spec
    log.info("sweep %s: keeping the settings of its first submission that the grid leaves unset: %s", spec.name,
             ", ".join(f"{k}={v}" for k, v in sorted(kept.items())))
    return dataclasses.replace(spec, settings=TrainSettings.model_validate({**spec.settings.model_dump(), **kept}))


def selections(configs: list[RunConfig]) -> set[str]:
    """The token selections the runs read."""
    return {c.tokens for c in configs}


def _first_value(registry: Registry, sweep: str, field: str, new: Any, old: Any) -> Any:
    """What the sweep's first run of a family that has SAE field ``field`` stored for it (``old`` where it stored
    none: it was registered before the field existed); ``new`` where the sweep has no such run (no run's identity
    depends on it)."""
    for arch, family in FAMILIES.items():
        if field in family.model_fields:
            runs = registry.list_runs(RunQuery(sweep=sweep, where=(f"arch={arch}",), limit=1))
            if runs:
                return runs[0].run.config.get("sae", {}).get(field, old)
    return new


def held_out(registry: Registry, settings: TrainSettings, dataset: DatasetRecord,
             configs: list[RunConfig]) -> Any:
    """The held-out dataset of ``settings.val_dataset`` (None without one), checked against the training ``dataset``
    for the runs of ``configs``: complete, other images, and activations of the same kind (model, preprocessing, token
    layout, width and the runs' layers). ConfigError naming every difference otherwise."""
    from saev_ops.datasets import require_complete
    from saev_ops.infer import provenance

    if settings.val_dataset is None:
        return None
    where = f"val_dataset {settings.val_dataset!r}"
    try:
        val = require_complete(registry, settings.val_dataset)
    except errors.SaevOpsError as exc:
        raise errors.ConfigError(f"{where}: {exc}") from None
    if val.id == dataset.id or val.content_hash == dataset.content_hash:
        raise errors.ConfigError(f"{where} is the training dataset {dataset.name!r}; a held-out dataset is recorded "
                                 "from other images with the same model")
    problems = []
    for tokens in sorted(selections(configs)):
        problems += [p for p in provenance.mismatches(dataset, val, tokens=tokens) if p not in problems]
    if val.d_model != dataset.d_model:
        problems.append(f"width: d_model {val.d_model} vs {dataset.d_model}")
    layers = sorted({dataset.layers[-1] if c.layer == -1 else c.layer for c in configs})
    missing = [la for la in layers if la not in val.layers]
    if missing:
        problems.append(f"layers: the runs read {layers}, {val.name!r} has {list(val.layers)}")
    if problems:
        raise errors.ConfigError(f"{where} does not hold the activations the runs train on ({dataset.name!r}):\n  "
                                 + "\n  ".join(problems))
    return val


def requeue_ended(registry: Registry, runs: list[RunRecord]) -> list[RunRecord]:
    """Queue the runs that ended without completing (failed, lost, cancelled) to train again: an explicit rerun
    (`sweep submit --retry-failed`, `saev-ops train RUN`), the only way such a run trains again. Returns them."""
    ended = [r for r in runs if r.status in ("failed", "lost", "cancelled")]
    for r in ended:
        registry.transition_run(r.id, "queued")
    return ended


def check_batch_size(configs: list[RunConfig], dataset: DatasetRecord, batch_size: int) -> None:
    """Refuse, before anything is written, runs whose token selection gives fewer rows than one batch (the job would
    fail at its start). Needs the dataset's recorded token layout; without one the job checks."""
    from saev_ops.shards.format import TokenLayout

    layout = dataset.extra.get("token_layout")
    if not layout:
        return
    short = []
    for tokens in sorted(selections(configs)):
        rows = dataset.n_examples * len(TokenLayout.from_json_dict(layout).indices(tokens))
        if batch_size > rows:
            short.append(f"tokens={tokens}: {rows:,} rows")
    if short:
        raise errors.ConfigError(f"train.batch_size {batch_size:,} is larger than what dataset {dataset.name!r} "
                                 f"gives one layer ({'; '.join(short)}); lower batch_size")


HOST_OVERHEAD_GB = 2.0
"""What a training job's process holds besides the loader (Python, torch, CUDA's host-side memory), in GiB."""


def page_cache_warnings(spec: SweepSpec, dataset: DatasetRecord, selections: set[str]) -> tuple[str, ...]:
    """Slurm jobs whose Shuffled loader groups will not fit in ``resources.mem_gb`` where the cluster counts page
    cache in a job's memory (cgroup memory limits, the usual set-up): the numbers the loader warns with when it
    starts, said before anything is queued. Needs the dataset's recorded token layout; without one the job warns."""
    from saev_ops.loaders import sizing
    from saev_ops.shards import dtypes
    from saev_ops.shards.format import TokenLayout

    layout = dataset.extra.get("token_layout")
    if spec.executor != "slurm" or not layout:
        return ()
    res, settings = spec.resources, spec.settings
    room = Room(max(0, int((res.mem_gb - HOST_OVERHEAD_GB) * 2**30)),
                f"resources.mem_gb={res.mem_gb:g} less ~{HOST_OVERHEAD_GB:g} for Python and torch")
    row_bytes = dataset.d_model * dtypes.disk_dtype(dataset.dtype).itemsize
    out = []
    for tokens in sorted(selections):
        size = sizing.sizing(
            n_examples=dataset.n_examples, rows_per_example=len(TokenLayout.from_json_dict(layout).indices(tokens)),
            d_model=dataset.d_model, row_bytes=row_bytes, read_bytes=dataset.tokens_per_example * row_bytes,
            buffer_mb=settings.buffer_mb, read_mb=sizing.READ_MB, batch_size=settings.batch_size,
            n_threads=sizing.default_threads(res.cpus))
        problem = size.fit_problem(settings.buffer_mb, room)
        if problem:
            need_gb = (size.groups_bytes + size.own_bytes) / sizing.ROOM_SHARE / 2**30 + HOST_OVERHEAD_GB
            out.append(f"tokens={tokens}: {problem[0]}\n  {problem[1]}, or resources.mem_gb="
                       f"{math.ceil(need_gb * 10) / 10:g} or more (where the cluster counts page cache in a job's "
                       "memory)")
    return tuple(out)


def window_warnings(configs: list[RunConfig]) -> tuple[str, ...]:
    """Runs whose dead window (``dead_tokens``) is longer than the tokens they train on: their dead_frac stays 0."""
    long = sorted({(c.sae.dead_tokens, c.train.n_tokens) for c in configs if c.sae.dead_tokens > c.train.n_tokens})
    return tuple(f"dead_tokens={w:,} is longer than the {n:,} tokens each SAE trains on: no latent can count as dead "
                 "and dead_frac stays 0; set dead_tokens below train.n_tokens" for w, n in long)


def _job_spec(registry: Registry, db_url: str, dataset: DatasetRecord, layer: int, tokens: str,
              members: list[tuple[int, RunConfig, str]], runs_root: str | pathlib.Path,
              settings: TrainSettings | None = None, val: Any = None) -> TrainJobSpec:
    """One job: runs (id, config, identity in the registry) that share dataset, layer, tokens and train settings;
    ``val``: the held-out dataset (:func:`held_out`)."""

    runs = tuple(RunSpec(run_id=rid, sae=cfg.sae, lr=cfg.lr, seed=cfg.seed, identity=identity)
                 for rid, cfg, identity in members)
    return TrainJobSpec(db_url=db_url, dataset=dataset.name, dataset_path=dataset.path,
                        dataset_hash=dataset.content_hash, layer=dataset.layers[-1] if layer == -1 else layer,
                        tokens=tokens, settings=settings or members[0][1].train, runs=runs,
                        runs_root=str(runs_root), val_dataset_path=val.path if val is not None else None,
                        registry_id=registry.registry_id)


def job_specs(registry: Registry, spec: SweepSpec, dataset: DatasetRecord, jobs: list[PlannedJob], db_url: str,
              val: Any = None) -> list[TrainJobSpec]:
    root = runs_root_for(spec)
    return [_job_spec(registry, db_url, dataset, job.layer, job.tokens,
                      list(zip(job.run_ids, job.configs, job.identities, strict=True)), root, val=val) for job in jobs]


def job_for_runs(registry: Registry, run_ids: tuple[int, ...], db_url: str, *, runs_root: str | None = None,
                 device: str | None = None) -> TrainJobSpec:
    """The job that trains registered runs together (`saev-ops train RUN...`): they must share dataset, layer, tokens
    and train settings. It writes where their sweep's job wrote them (so it resumes from that checkpoint), else under
    ``runs_root`` or the default root of their sweep."""
    from saev_ops.datasets import require_complete

    runs = [registry.get_run(i) for i in run_ids]
    configs = [RunConfig.from_stored(r.config) for r in runs]
    keys = {(r.dataset_id, c.layer, c.tokens, repr(sorted(c.train.model_dump().items())))
            for r, c in zip(runs, configs, strict=True)}
    if len(keys) != 1:
        raise errors.ConfigError("these runs do not share dataset, layer, tokens and train settings; train them "
                                 "in separate commands")
    dataset = registry.get_dataset_by_id(runs[0].dataset_id)
    require_complete(registry, dataset.name)
    settings = configs[0].train
    if device:
        settings = settings.model_copy(update={"device": device})
    recorded = {str(pathlib.Path(r.run_dir).parent) for r in runs if r.run_dir}
    if runs_root:
        root = pathlib.Path(runs_root)
    elif len(recorded) == 1:
        root = pathlib.Path(recorded.pop())  # where their sweep's job wrote (and checkpointed) them
    elif len(recorded) > 1:
        raise errors.ConfigError(f"these runs were written under different roots ({', '.join(sorted(recorded))}); "
                                 "train them in separate commands or pass --runs-root")
    else:
        sweep_id = runs[0].sweep_id
        names = {s.id: s.name for s, _ in registry.list_sweeps()} if sweep_id is not None else {}
        root = paths.default_runs_root(names.get(sweep_id) if sweep_id is not None else None)
    val = held_out(registry, settings, dataset, configs)
    return _job_spec(registry, db_url, dataset, configs[0].layer, configs[0].tokens,
                     [(r.id, c, r.config_hash) for r, c in zip(runs, configs, strict=True)], root, settings, val)


def launch(registry: Registry, spec: SweepSpec, dataset: DatasetRecord, jobs: list[PlannedJob], db_url: str,
           val: Any = None) -> list[str | None]:
    """Submit the planned jobs (``val``: their held-out dataset, :func:`held_out`) and record where each run went.
    When sbatch refuses a chunk of a large sweep, the runs submitted before it are recorded as such and the rest stay
    queued with no executor (pending): the error names the chunks that went in, and submitting the sweep again submits
    the pending runs."""
    from saev_ops.train import TrainJob

    if not jobs:
        return []
    specs = job_specs(registry, spec, dataset, jobs, db_url, val)
    r = spec.resources
    slurm = SlurmSpec(**r.model_dump(include=set(SlurmSpec.model_fields)))
    folder = paths.submitit_dir(runs_root_for(spec))
    if spec.executor == "debug":  # runs in this process: record where they go first
        _record_launch(registry, spec.executor, jobs, specs, [(None, None)] * len(jobs))
    try:
        ids = submit(spec.executor, folder, f"saev-{spec.name}", [TrainJob(s) for s in specs], slurm)
    except PartialSubmissionError as exc:
        _record_launch(registry, spec.executor, jobs, specs, exc.submitted)
        pending = [rid for job in jobs[len(exc.submitted):] for rid in job.run_ids]
        raise errors.ClusterError(f"{exc}\n{len(pending)} runs stay pending (queued, not submitted); "
                                  f"`saev-ops sweep submit` of the same file submits them") from exc
    if spec.executor != "debug":
        _record_launch(registry, spec.executor, jobs, specs, ids)
    return [jid for jid, _ in ids]


def _record_launch(registry: Registry, executor: str, jobs: list[PlannedJob], specs: list[TrainJobSpec],
                   ids: list[tuple[str | None, int | None]]) -> None:
    """Record, for the first ``len(ids)`` jobs, where their runs went (executor, run directory, job id), in one
    transaction."""
    updates: list[tuple[int, dict[str, Any]]] = []
    for job, job_spec, (jid, idx) in zip(jobs, specs, ids, strict=False):
        for rid in job.run_ids:
            fields: dict[str, Any] = {"executor": executor, "run_dir": str(paths.run_dir(job_spec.runs_root, rid))}
            if executor == "slurm":
                fields.update(slurm_job_id=jid, slurm_array_index=idx)
            elif executor == "local" and jid is not None:
                fields["local_pid"] = int(jid)
            updates.append((rid, fields))
    registry.set_many_run_fields(updates)

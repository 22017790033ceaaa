"""``grid.yaml``: the schema, validated before anything is written, with errors that name the key and line.

```yaml
name: inat21-topk            # sweep name (unique in the registry)
dataset: inat21              # registry name of a complete dataset
executor: local              # local | debug | slurm
runs_root: /scratch/runs     # optional; default $SAEV_OPS_HOME/runs/<sweep>
train: {batch_size: 4096, n_tokens: 10000000, log_every: 50, ckpt_every: 500, device: cuda}
base: {arch: topk, d_sae: 16384, k: 32, lr: 0.0004, layer: -1, tokens: patches}
grid: {k: [16, 32, 64], lr: [0.0001, 0.0004]}          # cartesian product
zip: {d_sae: [4096, 16384], aux_k: [128, 512]}        # zipped: same length, walked together
runs: [{arch: relu, l1_coeff: 0.001}, {}]              # explicit entries x grid x zip; an entry's keys win
resources: {partition: gpu, gpus: 1, cpus: 8, mem_gb: 64, time_min: 240, max_parallel: 8}
```
Per-run keys: every :class:`~saev_ops.sae.SAEConfig` field (but ``d_model``, taken from the dataset), ``lr``, ``seed``,
``layer``, ``tokens``.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from saev_ops import errors
from saev_ops.jobs import SlurmSpec
from saev_ops.registry.names import MAX_NAME_LENGTH, NAME_PATTERN
from saev_ops.sae.config import LEGACY_KEYS, SAEConfig
from saev_ops.schema import Schema
from saev_ops.train.spec import TrainSettings

RUN_KEYS = {f.name for f in dataclasses.fields(SAEConfig)} - {"d_model"} | {"lr", "seed", "layer", "tokens"}
TOKENS = ("all", "patches", "cls", "special", "no-registers")


class ResourcesModel(SlurmSpec):
    """``resources:``: the Slurm resources of each job, and how runs are grouped into jobs."""

    max_runs_per_job: int = Field(16, gt=0)
    """At most this many runs share a job (one pass over the data)."""
    device_memory_gb: float = Field(16.0, gt=0)
    """Memory the SAEs of one job may use on the device; grouping splits runs to fit it."""


class SweepModel(Schema):
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    dataset: str = Field(min_length=1)
    executor: Literal["local", "debug", "slurm"] = "local"
    runs_root: str | None = None
    train: TrainSettings = TrainSettings()
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: dict[str, list[Any]] = Field(default_factory=dict)
    runs: list[dict[str, Any]] = Field(default_factory=list)
    resources: ResourcesModel = ResourcesModel()


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    name: str
    dataset: str
    executor: str
    runs_root: str | None
    settings: TrainSettings
    resources: ResourcesModel
    configs: tuple[dict[str, Any], ...]
    """Expanded per-run configs (base + entry + grid + zip), not yet bound to the dataset's d_model."""
    text: str


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    node = root
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == part:
                    line = k.start_mark.line + 1
                    nxt = v
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def load_sweep(path: str | pathlib.Path) -> SweepSpec:
    """Parse and validate a grid file. Raises ConfigError listing every problem with its key and line."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_sweep(text, str(path))


def parse_sweep(text: str, source: str = "grid.yaml") -> SweepSpec:
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise errors.ConfigError(f"{source}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise errors.ConfigError(f"{source}: expected a mapping at the top level, found {type(data).__name__}")
    problems: list[str] = []

    def check_keys(section: str, keys: Any, loc: tuple[Any, ...]) -> None:
        for k in keys:
            if k not in RUN_KEYS:
                line = _line_of(root, (*loc, k))
                why = LEGACY_KEYS.get(k, f"unknown run key; valid: {', '.join(sorted(RUN_KEYS))}")
                problems.append(f"{source}{f':{line}' if line else ''}: {section}.{k}: {why}")

    for section in ("base", "grid", "zip"):  # run keys are checked even when other parts are invalid
        if isinstance(data.get(section), dict):
            check_keys(section, data[section], (section,))
    if isinstance(data.get("runs"), list):
        for i, entry in enumerate(data["runs"]):
            if isinstance(entry, dict):
                check_keys(f"runs[{i}]", entry, ("runs", i))
    try:
        model = SweepModel.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            loc = tuple(e["loc"])
            line = _line_of(root, loc)
            key = ".".join(str(x) for x in loc)
            problems.append(f"{source}{f':{line}' if line else ''}: {key}: {e['msg']}")
        raise errors.ConfigError("invalid sweep file:\n  " + "\n  ".join(_by_line(problems, source))) from None
    for k, v in model.grid.items():
        if not v:
            problems.append(f"{source}:{_line_of(root, ('grid', k))}: grid.{k}: empty list")
    lengths = {len(v) for v in model.zip.values()}
    if len(lengths) > 1:
        problems.append(f"{source}:{_line_of(root, ('zip',))}: zip: lists must have the same length, got "
                        + ", ".join(f"{k}={len(v)}" for k, v in model.zip.items()))
    if problems:
        raise errors.ConfigError("invalid sweep file:\n  " + "\n  ".join(_by_line(problems, source)))
    configs = expand(model)
    for i, cfg in enumerate(configs):  # each expanded run must make a valid SAE config
        try:
            validate_run(cfg, d_model=1)
        except errors.ConfigError as exc:
            raise errors.ConfigError(f"{source}: expanded run {i} {cfg}: {exc}") from None
    return SweepSpec(model.name, model.dataset, model.executor, model.runs_root,
                     model.train, model.resources, tuple(configs), text)


def _by_line(problems: list[str], source: str) -> list[str]:
    def line(p: str) -> int:
        rest = p[len(source) + 1 :].split(":", 1)[0] if p.startswith(source + ":") else ""
        return int(rest) if rest.isdigit() else 10**9

    return sorted(problems, key=line)


def expand(model: SweepModel) -> list[dict[str, Any]]:
    grid_keys = list(model.grid)
    combos = list(itertools.product(*(model.grid[k] for k in grid_keys))) or [()]
    zipped = ([dict(zip(model.zip, vals, strict=True)) for vals in zip(*model.zip.values(), strict=True)]
              if model.zip else [{}])
    out = []
    seen = set()
    for entry in model.runs or [{}]:
        for combo in combos:
            for z in zipped:
                # precedence: defaults < base < grid < zip < the explicit entry
                cfg = {"layer": -1, "tokens": "patches", "lr": 4e-4, "seed": 0, **model.base,
                       **dict(zip(grid_keys, combo, strict=True)), **z, **entry}
                key = repr(sorted(cfg.items()))
                if key not in seen:
                    seen.add(key)
                    out.append(cfg)
    return out


def validate_run(cfg: dict[str, Any], d_model: int) -> SAEConfig:
    sae_keys = {k: v for k, v in cfg.items() if k not in ("lr", "seed", "layer", "tokens")}
    if "d_sae" in sae_keys and isinstance(sae_keys.get("k"), int) and sae_keys["k"] > sae_keys["d_sae"]:
        raise errors.ConfigError(f"k={sae_keys['k']} > d_sae={sae_keys['d_sae']}")
    if not isinstance(cfg.get("lr"), (int, float)) or not cfg["lr"] > 0:
        raise errors.ConfigError(f"lr must be a number > 0, got {cfg.get('lr')!r}")
    if cfg.get("tokens") not in TOKENS:
        raise errors.ConfigError(f"tokens must be one of {', '.join(TOKENS)}, got {cfg.get('tokens')!r}")
    if not isinstance(cfg.get("layer"), int):
        raise errors.ConfigError(f"layer must be an integer, got {cfg.get('layer')!r}")
    return SAEConfig.from_dict({**sae_keys, "d_model": d_model})

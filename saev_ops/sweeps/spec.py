"""``grid.yaml``: the schema, validated before anything is written, with errors that name the key and line.

```yaml
name: inat21-topk            # sweep name (unique in the registry)
dataset: inat21              # registry name of a complete dataset
val_dataset: inat21-val      # optional: held-out dataset (same model, layers, preprocessing), val/... metrics
executor: local              # local | debug | slurm
runs_root: /scratch/runs     # optional; default $SAEV_OPS_HOME/runs/<sweep>
train: {batch_size: 4096, n_tokens: 10000000, log_every: 50, ckpt_every: 500, device: cuda}
base: {arch: topk, d_sae: 16384, k: 32, lr: 0.0004, layer: -1, tokens: patches}
grid: {k: [16, 32, 64], lr: [0.0001, 0.0004]}          # cartesian product
zip: {d_sae: [4096, 16384], aux_k: [128, 512]}        # zipped: same length, walked together
runs: [{arch: relu, l1_coeff: 0.001}, {}]              # explicit entries x grid x zip; an entry's keys win
resources: {partition: gpu, gpus: 1, cpus: 8, mem_gb: 64, time_min: 240, max_parallel: 8}
```
Per-run keys: every field of an SAE family (:mod:`saev_ops.sae.config`; but ``d_model``, taken from the dataset),
``lr``, ``seed``, ``layer``, ``tokens``.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import logging
import math
import pathlib
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from saev_ops import errors, tokens
from saev_ops.jobs import SlurmSpec
from saev_ops.registry.names import MAX_NAME_LENGTH, NAME_PATTERN
from saev_ops.runconfig import RUN_KEY_DEFAULTS, TrainSettings, entry_problems
from saev_ops.sae.config import FIELDS as SAE_FIELDS
from saev_ops.sae.config import LEGACY_KEYS
from saev_ops.schema import Schema

log = logging.getLogger(__name__)

MAX_RUNS = 100_000
"""Default of ``sweep submit --max-runs``: a larger grid is refused before anything is expanded."""
MAX_YAML_NODES = 1_000_000
"""A grid file whose YAML, aliases expanded, has more nodes than this is refused before it is built."""
RUN_KEYS = set(SAE_FIELDS) - {"d_model"} | set(RUN_KEY_DEFAULTS)


class Resources(SlurmSpec):
    """``resources:``: the Slurm resources of each job, and how runs are grouped into jobs."""

    max_runs_per_job: int = Field(16, gt=0)
    """At most this many runs share a job (one pass over the data)."""
    device_memory_gb: float = Field(16.0, gt=0)
    """Memory the SAEs of one job may use on the device; grouping splits runs to fit it."""


class RunsSections(Schema):
    """The sections that define the runs (checked, expanded and reported on their own, so a problem elsewhere in the
    file does not hide theirs)."""

    base: dict[str, Any] = Field(default_factory=dict)
    """Keys every run starts from."""
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    """Cartesian product over these lists."""
    zip: dict[str, list[Any]] = Field(default_factory=dict)
    """Lists walked together (same length)."""
    runs: list[dict[str, Any]] = Field(default_factory=list)
    """Explicit entries; each is combined with the grid and zip."""


class GridFile(RunsSections):
    """A grid.yaml file: the sweep's name, dataset, executor, train settings, resources and the sections that define
    its runs (the registry's sweep row is :class:`saev_ops.registry.models.SweepModel`)."""

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    """The sweep's name in the registry."""
    dataset: str = Field(min_length=1)
    """Registry name of a complete dataset."""
    executor: Literal["local", "debug", "slurm"] = "local"
    """Where the jobs run."""
    runs_root: str | None = None
    """Where run directories go (default $SAEV_OPS_HOME/runs/<sweep>)."""
    train: TrainSettings = TrainSettings()
    """Settings shared by every run of a job (below)."""
    resources: Resources = Resources()
    """Each job's Slurm resources, and how runs are grouped into jobs (below)."""

    @model_validator(mode="before")
    @classmethod
    def _val_dataset(cls, data: Any) -> Any:
        """The top-level ``val_dataset:`` is the train setting of that name (one definition: TrainSettings)."""
        if not isinstance(data, dict) or "val_dataset" not in data:
            return data
        data = dict(data)
        name = data.pop("val_dataset")
        train = data.get("train")
        if isinstance(train, dict):
            if train.get("val_dataset", name) != name:
                raise ValueError(f"val_dataset {name!r} and train.val_dataset {train['val_dataset']!r} differ; "
                                 "give it once")
            data["train"] = {**train, "val_dataset": name}
        elif train is None:
            data["train"] = {"val_dataset": name}
        return data


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    name: str
    dataset: str
    executor: str
    runs_root: str | None
    settings: TrainSettings
    resources: Resources
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


def load_sweep(path: str | pathlib.Path, *, max_runs: int = MAX_RUNS) -> SweepSpec:
    """Parse and validate a grid file. Raises ConfigError listing every problem with its key and line."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_sweep(text, str(path), max_runs=max_runs)


def _expanded_nodes(root: yaml.Node | None, source: str) -> int:
    """How many nodes the document has once its aliases are expanded (each shared node counted as often as it is
    used), without expanding them; a node that contains itself is refused."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise errors.ConfigError(f"{source}:{node.start_mark.line + 1}: a YAML alias that contains itself")
        open_.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        total = 1 + sum(size(c) for c in children)
        open_.discard(key)
        sizes[key] = min(total, MAX_YAML_NODES + 1)  # past the limit the exact count does not matter
        return sizes[key]

    return 0 if root is None else size(root)


def count_runs(data: dict[str, Any]) -> int:
    """How many runs the file's sections make (explicit entries x grid lists x zip length), from the lists' lengths
    alone: nothing is expanded. An upper bound: equal runs are counted once only after expansion."""
    runs = data.get("runs")
    n = len(runs) if isinstance(runs, list) and runs else 1
    grid = data.get("grid")
    if isinstance(grid, dict):
        n *= math.prod(len(v) for v in grid.values() if isinstance(v, list) and v)
    zipped = data.get("zip")
    if isinstance(zipped, dict):
        n *= min((len(v) for v in zipped.values() if isinstance(v, list)), default=1) or 1
    return n


def parse_sweep(text: str, source: str = "grid.yaml", *, max_runs: int = MAX_RUNS) -> SweepSpec:
    """Parse and validate a grid file's text (``max_runs``: refuse a grid of more runs, counted before expanding)."""
    try:
        root = yaml.compose(text)
        n_nodes = _expanded_nodes(root, source)
        if n_nodes > MAX_YAML_NODES:
            raise errors.ConfigError(f"{source}: the YAML expands to more than {MAX_YAML_NODES:,} values once its "
                                     "aliases (*name) are expanded; a grid file is far smaller")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise errors.ConfigError(f"{source}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:
        raise errors.ConfigError(f"{source}: the YAML is nested too deeply") from None
    if not isinstance(data, dict):
        raise errors.ConfigError(f"{source}: expected a mapping at the top level, found {type(data).__name__}")
    n_runs = count_runs(data)
    if n_runs > max_runs:
        raise errors.ConfigError(f"{source}: the sweep expands to {n_runs:,} runs (runs entries x grid x zip), more "
                                 f"than --max-runs {max_runs:,}; split it into several sweeps or raise --max-runs")
    problems: list[str] = []

    def check_keys(section: str, keys: Any, loc: tuple[Any, ...]) -> None:
        for k in keys:
            if k not in RUN_KEYS:
                line = _line_of(root, (*loc, k))
                why = LEGACY_KEYS.get(k, unknown_key(k, RUN_KEYS))
                problems.append(f"{source}{f':{line}' if line else ''}: {section}.{k}: {why}")

    for section in ("base", "grid", "zip"):  # run keys are checked even when other parts are invalid
        if isinstance(data.get(section), dict):
            check_keys(section, data[section], (section,))
    if isinstance(data.get("runs"), list):
        for i, entry in enumerate(data["runs"]):
            if isinstance(entry, dict):
                check_keys(f"runs[{i}]", entry, ("runs", i))
    model, schema_problems = _schema(data, root, source)
    problems += schema_problems + _structure(data, root, source)
    try:
        sections: RunsSections | None = RunsSections.model_validate(
            {k: data[k] for k in RunsSections.model_fields if k in data})
    except ValidationError:
        sections = None  # its problems are in schema_problems already
    if sections is not None:
        problems += [p for p in _runs(sections, root, source) if p not in problems]
    if problems or model is None:
        raise errors.ConfigError("invalid sweep file:\n  " + "\n  ".join(_by_line(problems, source)))
    _warn_old_token_names(sections, root, source)
    configs = tuple({**c, "tokens": tokens.canonical(c["tokens"])} for c in expand(model)[0])
    return SweepSpec(model.name, model.dataset, model.executor, model.runs_root,
                     model.train, model.resources, configs, text)


def _where(source: str, root: yaml.Node | None, loc: tuple[Any, ...] | None, key: str) -> str:
    line = _line_of(root, loc) if loc else None
    return f"{source}{f':{line}' if line else ''}: {'.'.join(str(x) for x in loc) if loc else key}"


def unknown_key(key: Any, valid: Any) -> str:
    """The one message for a key the file may not have: the valid keys, and the closest one when it is close."""

    names = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.75)
    return f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; valid: {', '.join(names)}"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema allows in the section at ``loc`` (the top level, ``train``, ``resources``)."""
    model: Any = GridFile
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and hasattr(model, "model_fields")):
            return []
    fields = list(model.model_fields)
    return fields + (["val_dataset"] if model is GridFile else [])


def _schema(data: dict[str, Any], root: yaml.Node | None, source: str) -> tuple[GridFile | None, list[str]]:
    """The file against the schema: the model, or every problem with its key and line."""
    try:
        return GridFile.model_validate(data), []
    except ValidationError as exc:
        out = []
        for e in exc.errors():
            hint = ""
            if isinstance(e.get("input"), bool) and e["type"] == "string_type":
                hint = " (YAML reads off/on/yes/no/true/false as booleans: quote it)"
            loc = tuple(e["loc"])
            message = e["msg"]
            if e["type"] == "extra_forbidden" and loc:
                message = unknown_key(loc[-1], _fields_at(loc[:-1]))
            out.append(f"{_where(source, root, loc, '')}: {message}{hint}")
        return None, out


def _structure(data: dict[str, Any], root: yaml.Node | None, source: str) -> list[str]:
    """What the schema cannot say: empty grid lists, zip lists of different lengths (read from the raw file, so they
    are reported even when other parts are invalid)."""
    out = []
    grid = data.get("grid")
    for k, v in grid.items() if isinstance(grid, dict) else ():
        if isinstance(v, list) and not v:
            out.append(f"{_where(source, root, ('grid', k), '')}: empty list (a grid key needs values)")
    zipped = data.get("zip")
    if isinstance(zipped, dict) and len({len(v) for v in zipped.values() if isinstance(v, list)}) > 1:
        out.append(f"{_where(source, root, ('zip',), '')}: lists must have the same length, got "
                   + ", ".join(f"{k}={len(v)}" for k, v in zipped.items() if isinstance(v, list)))
    return out


def _runs(sections: RunsSections, root: yaml.Node | None, source: str) -> list[str]:
    """Every problem of every expanded run, at the key (and line) its bad value came from, each once. Empty grid lists
    and zip lists of different lengths (reported on their own) are left out or cut to the shortest here, so the other
    keys are still checked."""
    out: list[str] = []
    grid = {k: v for k, v in sections.grid.items() if v}
    shortest = min((len(v) for v in sections.zip.values()), default=0)
    zipped = {k: v[:shortest] for k, v in sections.zip.items()}
    for cfg, origin in zip(*expand(sections.model_copy(update={"grid": grid, "zip": zipped})), strict=True):
        for key, message in entry_problems(cfg):
            problem = f"{_where(source, root, origin.get(key), key)}: {message}"
            if problem not in out:
                out.append(problem)
    return out


def _warn_old_token_names(sections: RunsSections | None, root: yaml.Node | None, source: str) -> None:
    """A warning at each ``tokens:`` that uses a name from before the vocabulary was one (read as its new name)."""
    if sections is None:
        return
    found: list[tuple[tuple[Any, ...], Any]] = [(("base", "tokens"), sections.base.get("tokens"))]
    found += [(("grid", "tokens", i), v) for i, v in enumerate(sections.grid.get("tokens", []))]
    found += [(("zip", "tokens", i), v) for i, v in enumerate(sections.zip.get("tokens", []))]
    found += [(("runs", i, "tokens"), e.get("tokens")) for i, e in enumerate(sections.runs)]
    for loc, value in found:
        if isinstance(value, str) and value in tokens.OLD_NAMES:
            log.warning("%s: tokens %r is now called %r (read as that; the runs keep their identity)",
                        _where(source, root, loc, "tokens"), value, tokens.OLD_NAMES[value])


def _by_line(problems: list[str], source: str) -> list[str]:
    def line(p: str) -> int:
        rest = p[len(source) + 1 :].split(":", 1)[0] if p.startswith(source + ":") else ""
        return int(rest) if rest.isdigit() else 10**9

    return sorted(problems, key=line)


def expand(model: RunsSections) -> tuple[list[dict[str, Any]], list[dict[str, tuple[Any, ...]]]]:
    """The sweep's runs (precedence: defaults < base < grid < zip < the explicit entry, duplicates once), each with
    where every key came from (a location in the file, for messages)."""
    grid_keys = list(model.grid)
    combos = list(itertools.product(*(model.grid[k] for k in grid_keys))) or [()]
    zipped = ([dict(zip(model.zip, vals, strict=True)) for vals in zip(*model.zip.values(), strict=True)]
              if model.zip else [{}])
    out, origins = [], []
    seen = set()
    for i, entry in enumerate(model.runs or [{}]):
        for combo in combos:
            for z in zipped:
                cfg = {**RUN_KEY_DEFAULTS, **model.base,
                       **dict(zip(grid_keys, combo, strict=True)), **z, **entry}
                key = repr(sorted(cfg.items()))
                if key in seen:
                    continue
                seen.add(key)
                origin: dict[str, tuple[Any, ...]] = {k: ("base", k) for k in model.base}
                origin.update({k: ("grid", k) for k in grid_keys})
                origin.update({k: ("zip", k) for k in z})
                origin.update({k: ("runs", i, k) for k in entry})
                out.append(cfg)
                origins.append(origin)
    return out, origins

"""``saev-ops eval``: how much of the model's behaviour survives when an SAE's reconstruction replaces the activations
it was trained on.

For each SAE, on ``n_images`` images of a dataset (evenly spaced over it), the dataset's model runs three ways at the
SAE's layer and tokens: clean, *spliced* (the rows replaced by the SAE's reconstruction) and *ablated* (the rows
replaced by the layer's dataset mean). With ``d(a, b)`` the mean squared distance between final representations
(:mod:`saev_ops.downstream.splice`):

- ``fidelity = 1 - d(spliced, clean) / d(ablated, clean)``: 1 for a perfect reconstruction, 0 for one no better than
  the mean, below 0 for worse;
- ``kl``: mean KL(clean || spliced) of the class distribution, where the checkpoint has a classification head;
- ``probe_clean`` / ``probe_spliced``: accuracy of one linear probe (multinomial logistic regression fitted on the clean
  representations of half the images, by their labels) on the other half's clean and spliced representations, where
  the dataset has labels.

SAEs of one layer and token selection share each batch's forward up to their layer. Results are registered once all
are computed (an evaluation row per run and dataset, and ``fidelity``/``kl``/``probe_acc`` metric points, so
``runs list``, ``runs pareto`` and the report see them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from saev_ops import errors
from saev_ops.infer import provenance
from saev_ops.progress import Progress
from saev_ops.registry import DatasetRecord, EvaluationRecord, Registry, RunRecord
from saev_ops.shards import ShardReader
from saev_ops.shards.format import TokenLayout
from saev_ops.shards.index import IndexReader

if TYPE_CHECKING:
    from saev_ops.sae.modules import SAE

log = logging.getLogger(__name__)
KIND = "splice"
PROBE_STEPS = 200


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSpec:
    db_url: str
    run_ids: tuple[int, ...]
    dataset: str
    n_images: int = 256
    batch_size: int = 16
    """Images per forward (each carries 2 + the group's SAEs variants after the layer)."""
    device: str = "cpu"
    allow_model_mismatch: bool = False


@dataclasses.dataclass(frozen=True)
class Scores:
    fidelity: float | None
    kl: float | None
    probe: float | None
    d_spliced: float


def select_examples(n_examples: int, n_images: int) -> np.ndarray:
    """``n_images`` example ids spread evenly over the dataset (ImageFolder order groups classes)."""
    n = min(n_images, n_examples)
    return np.unique(np.linspace(0, n_examples - 1, n).round().astype(np.int64))


def load_recorded_model(dataset: DatasetRecord, device: str) -> Any:
    """The model a dataset was recorded with, loaded as it was: refuses when its weights or preprocessing changed."""
    from saev_ops.record.models import load_model

    prov = dataset.extra.get("provenance") or {}
    model = prov.get("model") or {}
    if not model:
        raise errors.ConfigError(f"dataset {dataset.name!r} has no recorded model provenance (imported from saev?); "
                                 "eval runs the model it was recorded with: record the dataset with saev-ops")
    adapter = load_model(model.get("resolved") or f"{dataset.model_family}:{dataset.model_ckpt}", device,
                         prov.get("resolution"))
    if model.get("weights_sha256") and adapter.weights_hash() != model["weights_sha256"]:
        raise errors.ConfigError(f"the weights of {adapter.resolved()} changed since dataset {dataset.name!r} was "
                                 f"recorded (sha256 {model['weights_sha256'][:12]})")
    now = json.loads(json.dumps(adapter.preprocess.describe()))
    if model.get("preprocess") and now != model["preprocess"]:
        raise errors.ConfigError(f"{adapter.resolved()} now preprocesses as {now}, dataset {dataset.name!r} was "
                                 f"recorded with {model['preprocess']}")
    return adapter


def _identity(x: Any) -> Any:
    return x


def _constant(row: Any) -> Any:
    def edit(x: Any) -> Any:
        return row.expand_as(x)

    return edit


def _sae_edit(sae: SAE, scale: float) -> Any:
    def edit(x: Any) -> Any:
        xs = x.float() * scale
        return sae.decode(sae.encode(xs)) / scale

    return edit


def distance(a: Any, b: Any) -> float:
    """Mean over images of the squared Euclidean distance of two (n, d) representations."""
    return float((a.double() - b.double()).pow(2).sum(-1).mean())


def kl_divergence(clean: Any, other: Any) -> float:
    """Mean KL(softmax(clean) || softmax(other)) over images, in nats."""
    import torch

    p = torch.log_softmax(clean.double(), -1)
    q = torch.log_softmax(other.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def fit_probe(x: Any, y: Any, n_classes: int, seed: int = 0) -> Any:
    """A multinomial logistic regression on standardised features (L-BFGS, light L2); returns predict(x) -> labels."""
    import torch

    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], n_classes).double()
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")
    xs = ((x - mean) / std).double()

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xs), y) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)

    def predict(z: Any) -> Any:
        with torch.no_grad():
            return lin(((z - mean) / std).double()).argmax(-1)

    return predict


def scores(clean: Any, ablated: Any, spliced: Any, logits: tuple[Any, Any, Any] | None,
           probe: Any) -> tuple[Scores, dict[str, float]]:
    """The scores of one SAE; also what the ablation scores (the reference it is measured against)."""
    d_spl, d_abl = distance(spliced, clean), distance(ablated, clean)
    fidelity = 1.0 - d_spl / d_abl if d_abl > 0 else None
    kl = kl_divergence(logits[0], logits[2]) if logits is not None else None
    acc = probe(spliced) if probe is not None else None
    ref = {"d_ablated": d_abl}
    if logits is not None:
        ref["kl_ablated"] = kl_divergence(logits[0], logits[1])
    if probe is not None:
        ref["probe_ablated"] = probe(ablated)
    return Scores(fidelity, kl, acc, d_spl), ref


def run_eval(spec: EvalSpec) -> list[EvaluationRecord]:
    """Evaluate the runs' SAEs spliced into the dataset's model; returns the registered evaluations."""
    import torch

    from saev_ops.downstream.splice import SpliceModel, model_positions
    from saev_ops.sae.io import load_sae

    reg = Registry(spec.db_url)
    dataset, runs = provenance.usable_runs(reg, spec.run_ids, spec.dataset, allow=spec.allow_model_mismatch,
                                           purpose="an SAE to evaluate")
    adapter = load_recorded_model(dataset, spec.device)
    model = SpliceModel(adapter)
    reader = ShardReader(dataset.path)
    stored = TokenLayout.from_json_dict(dataset.extra["token_layout"]) if dataset.extra.get("token_layout") \
        else reader.layout
    stats = reader.stats()
    mean = {layer: torch.from_numpy(stats["mean"][reader.layer_index(layer)]).float().to(spec.device)
            for layer in dataset.layers}
    ids = select_examples(dataset.n_examples, spec.n_images)
    index = IndexReader(pathlib.Path(dataset.path) / "index.lmdb")
    try:
        entries = [index.get(int(i)) for i in ids]
    finally:
        index.close()
    labels = [e.label for e in entries]
    groups: dict[tuple[int, str], list[tuple[RunRecord, Any, float]]] = {}
    for run in runs:
        assert run.checkpoint_path is not None  # usable_runs refused runs without one
        sae, meta = load_sae(pathlib.Path(run.checkpoint_path), spec.device)
        groups.setdefault((int(meta["layer"]), str(meta.get("tokens", run.config.get("tokens", "patches")))),
                          []).append((run, sae, float(meta["scale"])))
    results: list[tuple[RunRecord, Scores, dict[str, Any]]] = []
    for (layer, tokens), members in groups.items():
        if layer not in dataset.layers:
            raise errors.ConfigError(f"runs {[m[0].id for m in members]} read layer {layer}, which dataset "
                                     f"{dataset.name!r} does not have (layers {list(dataset.layers)})")
        positions = model_positions(stored, adapter.layout, tokens)
        edits = [_identity, _constant(mean[layer])] + [_sae_edit(sae, sc) for _, sae, sc in members]
        embeds, logits = _forward_all(model, adapter, entries, layer, positions, edits, spec)
        probe, probe_why = _probe(embeds[0], labels)
        if probe is not None and len(labels) // 2 < MIN_PROBE_TEST:
            log.warning("the probe is scored on %d held-out images: its accuracy moves in steps of %.1f%%, too coarse "
                        "to tell SAEs apart (--n-images %d or more)", len(labels) // 2, 100 / (len(labels) // 2),
                        2 * MIN_PROBE_TEST)
        for j, (run, _sae, _scale) in enumerate(members):
            lg = (logits[0], logits[1], logits[2 + j]) if logits is not None else None
            sc, ref = scores(embeds[0], embeds[1], embeds[2 + j], lg, probe and probe[1])
            missing = {}
            if sc.fidelity is None:
                missing["fidelity"] = "undefined: ablation changes nothing here"
                log.warning("run %d: ablating %s at layer %d does not change the final representation (patch tokens "
                            "of the last block never reach its CLS token): fidelity is undefined", run.id, tokens,
                            layer)
            if sc.kl is None:
                missing["kl"] = "no classification head"
            if probe_why is not None:
                missing["probe"] = probe_why
            extra = {"layer": layer, "tokens": tokens, "model": adapter.resolved(), "examples": len(ids),
                     **ref, "d_spliced": sc.d_spliced, **({"probe_clean": probe[0]} if probe else {}),
                     **({"missing": missing} if missing else {})}
            results.append((run, sc, extra))
    reader.close()
    out = []
    for run, sc, extra in results:  # registered only once every SAE is evaluated
        out.append(reg.add_evaluation(run_id=run.id, dataset=dataset.name, kind=KIND, n_images=len(ids),
                                      fidelity=sc.fidelity, kl=sc.kl, probe_clean=extra.get("probe_clean"),
                                      probe_spliced=sc.probe, extra=extra))
        step = _final_step(run)
        points = [(k, step, v) for k, v in (("fidelity", sc.fidelity), ("kl", sc.kl), ("probe_acc", sc.probe))
                  if v is not None]
        reg.log_metrics(run.id, points)
    return out


def _forward_all(model: Any, adapter: Any, entries: list[Any], layer: int, positions: list[int], edits: list[Any],
                 spec: EvalSpec) -> tuple[Any, Any]:
    import torch

    embeds, logits = [], []
    bar = Progress(f"eval on {spec.dataset}, {len(edits) - 2} SAEs at layer {layer}", len(entries), "images", log)
    with bar, torch.inference_mode():
        for start in range(0, len(entries), spec.batch_size):
            part = entries[start:start + spec.batch_size]
            try:
                pixels = torch.from_numpy(np.stack([adapter.preprocess(e.path) for e in part])).to(spec.device)
            except OSError as exc:
                raise errors.DataError(f"cannot read an image of dataset {spec.dataset!r} ({exc}); eval reads the "
                                       "recorded images again") from None
            out = model.run(pixels, layer, positions, edits)
            embeds.append(out.embed.cpu())
            if out.logits is not None:
                logits.append(out.logits.cpu())
            bar.update(start + len(part))
    return torch.cat(embeds, 1), (torch.cat(logits, 1) if logits else None)


def _probe(clean: Any, labels: list[int | None]) -> tuple[tuple[float, Any] | None, str | None]:
    """A probe fitted on the even-numbered images' clean representations, scored on the odd-numbered ones: ((clean
    accuracy, score(representations) -> accuracy), None), or (None, why there is none)."""
    import torch

    if any(v is None for v in labels):
        return None, "images without class labels"
    if len(labels) < 4:
        return None, "fewer than 4 images"
    y = torch.tensor(labels, dtype=torch.long)
    train, test = torch.arange(0, len(y), 2), torch.arange(1, len(y), 2)
    classes = torch.unique(y[train])
    if len(classes) < 2:
        return None, "one class"
    remap = {int(c): i for i, c in enumerate(classes)}
    y_train = torch.tensor([remap[int(v)] for v in y[train]])
    predict = fit_probe(clean[train], y_train, len(classes))
    y_test = torch.tensor([remap.get(int(v), -1) for v in y[test]])

    def score(rep: Any) -> float:
        return float((predict(rep[test]) == y_test).double().mean())

    return (score(clean), score), None


MIN_PROBE_TEST = 64
"""Below this many held-out images a probe's accuracy is too coarse to rank SAEs (a warning says so)."""


def _final_step(run: RunRecord) -> int:
    train = run.config.get("train") or {}
    if "n_tokens" in train and "batch_size" in train:
        return max(1, int(train["n_tokens"]) // int(train["batch_size"]))
    return 0

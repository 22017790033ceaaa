"""SAEs in other projects' formats: saev's checkpoint file and SAELens' directory, both ways.

saev (``saev.nn.modeling.dump``/``load``, schema 5): one file, a JSON header line ``{"schema", "cfg", "commit",
"lib"}`` then ``torch.save`` of the state dict (``W_enc`` (d_model, d_sae), ``b_enc``, ``W_dec`` (d_sae, d_model),
``b_dec``; BatchTopK adds ``activation.threshold``). Its encoder reads the input as it is (no decoder-bias
subtraction) and its activations are ReLU, TopK and BatchTopK. saev's loader reads only ``schema`` and ``cfg`` from the
header, so the export adds a ``saev_ops`` key there with where the SAE came from.

SAELens (``SAE.save_model``/``load_from_disk``): a directory with ``cfg.json`` (``architecture`` standard, topk or
jumprelu, ``d_in``, ``d_sae``, ``apply_b_dec_to_input``, ``normalize_activations``, ``k`` for topk, and the 6.x layout's
``metadata`` with ``sae_lens_version``, ``model_name``, ``hook_name``, ``dataset_path``) and
``sae_weights.safetensors`` (the same four tensors, plus ``threshold`` for jumprelu). SAELens 6 reads ``metadata`` only
when the config says it was written by 6.0 or later (``sae_lens_version`` there or at the top level); otherwise it takes
the names from top-level keys, so a ``metadata`` without that version loses them.

Both read raw activations, while a saev-ops SAE reads them multiplied by its dataset's ``scale`` s. Every exported
activation is positively homogeneous (ReLU, TopK, BatchTopK and JumpReLU with its threshold scaled alike: act(h / s) =
act(h) / s), so the export moves the scale to the biases and the thresholds and leaves both weight matrices as they
are: ``b_enc / s``, ``b_dec / s``, thresholds ``/ s``. The decoder keeps its unit-norm rows (saev's
``normalize_w_dec``, which its fine-tuning keeps; folding s into ``W_dec`` instead would give rows of norm 1/s), the
reconstruction is the same, and the exported latents are saev-ops' divided by s (the activation in raw units). Exact
when the scale is 1 (an imported SAE), a rounding of the last bit otherwise.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
from typing import Any

import torch

from saev_ops import __version__, atomic, errors
from saev_ops.sae.config import PURSUITS, AuxKConfig, BatchTopKConfig, ReLUConfig, SAEConfig, TopKConfig
from saev_ops.sae.modules import SAE, build_sae

SAEV_SCHEMA = 5
SAELENS_LAYOUT_VERSION = "6.0.0"
"""The SAELens config layout the export writes (``metadata`` holds the names), as ``metadata.sae_lens_version``."""
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
_SAEV_ACT = {"relu": "Relu", "topk": "TopK", "matryoshka": "TopK", "batchtopk": "BatchTopK"}
_SAELENS_ARCH = {"relu": "standard", "topk": "topk", "matryoshka": "topk", "jumprelu": "jumprelu",
                 "batchtopk": "jumprelu"}


_PER_ROW_RANK = ("this BatchTopK SAE ranks each activation relative to its own row (batchtopk_rank {rank}): its "
              "threshold is relative to each row, and {fmt}'s BatchTopK fires on one threshold for every row, so it "
              "would compute other latents")


_MLP = ("this SAE's encoder is an MLP (encoder_hidden > 0); {fmt}'s SAEs encode with one linear map and an activation, "
        "so it cannot express this one")
_NO_PURSUIT = ("a matching-pursuit SAE ({arch}) encodes by k greedy steps over its decoder, with no encoder weights; "
               "{fmt}'s SAEs encode with one linear map and an activation, so it cannot express this one")


def _payload(cls: str, **params: Any) -> dict[str, Any]:
    """saev's serialised dataclass: ``{"cls": name, "params": fields}``."""
    return {"cls": cls, "params": params}


def _folded(sae: SAE, scale: float, *, b_dec_into_b_enc: bool) -> dict[str, torch.Tensor]:
    """W_enc, b_enc, W_dec, b_dec of ``sae`` for raw activations, the weight matrices unchanged (see the module
    docstring); thresholds are divided by the same ``scale`` where they are written."""
    w_enc, b_enc = sae.W_enc.detach().cpu(), sae.b_enc.detach().cpu()
    w_dec, b_dec = sae.W_dec.detach().cpu(), sae.b_dec.detach().cpu()
    if b_dec_into_b_enc and sae.cfg.apply_b_dec_to_input:  # (s x - b_dec) W + b = s x W + (b - b_dec W)
        b_enc = b_enc - b_dec @ w_enc
    if scale != 1.0:  # pre / s: x W + b_enc / s; the reconstruction / s: W_dec (z / s) + b_dec / s
        b_enc, b_dec = b_enc / scale, b_dec / scale
    return {"W_enc": w_enc.contiguous(), "b_enc": b_enc.contiguous(), "W_dec": w_dec.contiguous(),
            "b_dec": b_dec.contiguous()}


# -- saev ------------------------------------------------------------------------------------------------------------
def export_saev(sae: SAE, meta: dict[str, Any], path: pathlib.Path) -> pathlib.Path:
    """Write ``sae`` as a saev checkpoint file at ``path`` (atomically)."""
    arch = sae.cfg.arch
    if arch in PURSUITS:
        raise errors.ConfigError(_NO_PURSUIT.format(fmt="saev", arch=arch))
    if sae.cfg.encoder_hidden:
        raise errors.ConfigError(_MLP.format(fmt="saev"))
    if arch not in _SAEV_ACT:
        raise errors.ConfigError(f"saev has no {arch} activation (it has ReLU, TopK and BatchTopK); export this SAE "
                                 "to SAELens instead" if arch == "jumprelu" else
                                 f"saev has no {arch} activation (it has ReLU, TopK and BatchTopK)")
    c = sae.cfg
    if isinstance(c, BatchTopKConfig) and c.batchtopk_rank != "value":
        raise errors.ConfigError(_PER_ROW_RANK.format(fmt="saev", rank=c.batchtopk_rank))
    no_sparsity = _payload("NoSparsity", key="no-sparsity")
    if isinstance(c, ReLUConfig):
        activation = _payload("Relu", key="relu", sparsity=_payload("L1Sparsity", key="l1-sparsity", coeff=c.l1_coeff),
                              aux=_payload("NoAux", key="no-aux"))
    else:  # the TopK families saev has (_SAEV_ACT): each with AuxK
        assert isinstance(c, AuxKConfig), c.arch
        auxk = _payload("AuxK", key="auxk", k_aux=c.aux_k, alpha=c.aux_coeff)
        activation = _payload("TopK", key="top-k", top_k=c.k, sparsity=no_sparsity, aux=auxk) \
            if _SAEV_ACT[arch] == "TopK" else _payload("BatchTopK", key="batch-top-k", top_k=c.k,
                                                       sparsity=no_sparsity, momentum=0.01, aux=auxk)
    cfg = {"d_model": sae.cfg.d_model, "d_sae": sae.cfg.d_sae, "activation": activation, "reinit_blend": 0.0,
           "reinit_enc_dec_tranpose": True, "remove_parallel_grads": True,
           # an archetypal SAE's fused atoms have the norms its simplex and scale gave them: not unit rows
           "normalize_w_dec": (meta.get("trained_as") or {}).get("arch") != "archetypal"}
    scale = float(meta.get("scale", 1.0))
    state = _folded(sae, scale, b_dec_into_b_enc=True)
    if arch == "batchtopk":
        threshold = sae.get_buffer("threshold").detach().cpu()
        state["activation.threshold"] = threshold.clamp_min(0.0) / scale  # saev: 0 = not estimated (ours: -1)
    header = {"schema": SAEV_SCHEMA, "cfg": cfg, "commit": "unknown", "lib": f"saev-ops {__version__}",
              "saev_ops": _origin(sae, meta)}
    buf = io.BytesIO()
    torch.save(state, buf)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, json.dumps(header).encode() + b"\n" + buf.getvalue())
    return path


def read_saev(path: pathlib.Path) -> tuple[SAE, dict[str, Any]]:
    """A saev checkpoint file as a saev-ops SAE (scale 1, no decoder-bias subtraction) and its header."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as fh:
            header = json.loads(fh.readline())
            state = torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise errors.NotFoundError(f"{path}: no such SAE file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.DataError(f"{path}: not a saev checkpoint (its first line is not a JSON header: {exc})") from None
    except Exception as exc:  # torch.load's errors are many (pickle, zip, weights_only refusals)
        raise errors.DataError(f"{path}: the state dict after saev's header does not load ({exc})") from None
    if header.get("schema") not in (2, 3, 4, 5) or "cfg" not in header:
        raise errors.DataError(f"{path}: saev header schema {header.get('schema')!r}; saev-ops reads schemas 2-5")
    cfg = header["cfg"]
    act = cfg.get("activation") or {}
    kind, params = act.get("cls"), act.get("params") or {}
    arch = {"Relu": "relu", "TopK": "topk", "BatchTopK": "batchtopk"}.get(str(kind))
    if arch is None:
        raise errors.DataError(f"{path}: saev activation {kind!r}; saev-ops reads Relu, TopK and BatchTopK")
    fields: dict[str, Any] = {"arch": arch, "d_model": int(cfg["d_model"]), "d_sae": int(cfg["d_sae"]),
                              "apply_b_dec_to_input": False}
    if arch in ("topk", "batchtopk"):
        fields["k"] = int(params.get("top_k", 32))
    if arch == "topk":
        fields["topk_relu"] = False  # saev's TopK keeps the k largest pre-activations as they are
    sparsity = params.get("sparsity") or {}
    if arch == "relu" and sparsity.get("cls") == "L1Sparsity":
        fields["l1_coeff"] = float((sparsity.get("params") or {}).get("coeff", 0.0))
    sae = build_sae(SAEConfig.of(**fields))
    ours: dict[str, torch.Tensor] = {k: state[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k in state}
    if arch == "batchtopk" and "activation.threshold" in state:
        ours["threshold"] = state["activation.threshold"].reshape(())
    _load(sae, ours, path)
    return sae, header


# -- SAELens ---------------------------------------------------------------------------------------------------------
def export_saelens(sae: SAE, meta: dict[str, Any], directory: pathlib.Path) -> pathlib.Path:
    """Write ``sae`` as a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``), atomically."""
    from safetensors.torch import save_file

    arch = sae.cfg.arch
    if arch in PURSUITS:
        raise errors.ConfigError(_NO_PURSUIT.format(fmt="SAELens", arch=arch))
    if sae.cfg.encoder_hidden:
        raise errors.ConfigError(_MLP.format(fmt="SAELens"))
    if arch not in _SAELENS_ARCH:
        raise errors.ConfigError(f"SAELens has no {arch} architecture (standard, topk, jumprelu)")
    if isinstance(sae.cfg, TopKConfig) and not sae.cfg.topk_relu:
        raise errors.ConfigError("SAELens' TopK applies a ReLU to the k largest pre-activations and this SAE (saev's "
                                 "TopK, topk_relu false) keeps negative ones: export it to saev instead")
    if isinstance(sae.cfg, BatchTopKConfig) and sae.cfg.batchtopk_rank != "value":
        raise errors.ConfigError(_PER_ROW_RANK.format(fmt="SAELens (as a JumpReLU)", rank=sae.cfg.batchtopk_rank))
    scale = float(meta.get("scale", 1.0))
    state = _folded(sae, scale, b_dec_into_b_enc=False)
    if arch == "jumprelu":
        state["threshold"] = (sae.get_parameter("log_threshold").detach().cpu().exp() / scale).contiguous()
    elif arch == "batchtopk":  # SAELens saves BatchTopK SAEs as JumpReLU with the learned threshold
        t = float(sae.get_buffer("threshold"))
        if t < 0:
            raise errors.ConfigError("this BatchTopK SAE has no inference threshold yet (train it first)")
        state["threshold"] = torch.full((sae.cfg.d_sae,), t / scale)
    cfg: dict[str, Any] = {
        "architecture": _SAELENS_ARCH[arch], "d_in": sae.cfg.d_model, "d_sae": sae.cfg.d_sae, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input, "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_LAYOUT_VERSION, "model_name": meta.get("model"),
                     "hook_name": f"blocks.{meta.get('layer')}.hook_resid_post", "hook_head_index": None,
                     "hook_layer": meta.get("layer"), "dataset_path": meta.get("dataset"),
                     "saev_ops": _origin(sae, meta)},
    }
    if _SAELENS_ARCH[arch] == "topk":
        assert isinstance(sae.cfg, AuxKConfig), arch  # topk, matryoshka
        cfg["k"] = sae.cfg.k
    directory = pathlib.Path(directory)
    tmp = atomic.fresh_dir(directory.with_name(directory.name + ".tmp"))
    save_file(state, str(tmp / SAELENS_WEIGHTS))
    (tmp / SAELENS_CFG).write_text(json.dumps(cfg, indent=2))
    atomic.replace_dir(tmp, directory)
    return directory


def read_saelens(directory: pathlib.Path) -> tuple[SAE, dict[str, Any]]:
    """A SAELens directory as a saev-ops SAE (scale 1) and its cfg.json."""
    from safetensors.torch import load_file

    directory = pathlib.Path(directory)
    cfg_path, weights = directory / SAELENS_CFG, directory / SAELENS_WEIGHTS
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise errors.NotFoundError(f"{cfg_path}: missing (a SAELens SAE directory has {SAELENS_CFG} and "
                                   f"{SAELENS_WEIGHTS})") from None
    except json.JSONDecodeError as exc:
        raise errors.DataError(f"{cfg_path}: not valid JSON ({exc})") from None
    if cfg.get("normalize_activations", "none") != "none":
        raise errors.DataError(f"{cfg_path}: normalize_activations={cfg['normalize_activations']!r}; fold the "
                               "scaling factor into the weights first (SAELens' fold_activation_norm_scaling_factor)")
    arch = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(str(cfg.get("architecture")))
    if arch is None:
        raise errors.DataError(f"{cfg_path}: architecture {cfg.get('architecture')!r}; saev-ops reads standard, topk "
                               "and jumprelu")
    fields: dict[str, Any] = {"arch": arch, "d_model": int(cfg["d_in"]), "d_sae": int(cfg["d_sae"]),
                              "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True))}
    if arch == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if k is None:
            raise errors.DataError(f"{cfg_path}: a topk SAE without k")
        fields["k"] = int(k)
    sae = build_sae(SAEConfig.of(**fields))
    try:
        state = load_file(str(weights), device="cpu")
    except FileNotFoundError:
        raise errors.NotFoundError(f"{weights}: missing") from None
    ours: dict[str, torch.Tensor] = {k: state[k].float() for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k in state}
    if arch == "jumprelu":
        if "threshold" not in state:
            raise errors.DataError(f"{weights}: a jumprelu SAE without threshold")
        ours["log_threshold"] = state["threshold"].float().clamp_min(1e-30).log()
    _load(sae, ours, weights)
    return sae, cfg


# -- shared -----------------------------------------------------------------------------------------------------------
def _load(sae: SAE, tensors: dict[str, torch.Tensor], source: pathlib.Path) -> None:
    """Load the foreign ``tensors`` into ``sae``, naming any missing or misshapen one."""
    own = sae.state_dict()
    problems = []
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if name not in tensors:
            problems.append(f"{name} missing")
        elif tuple(tensors[name].shape) != tuple(own[name].shape):
            problems.append(f"{name} is {tuple(tensors[name].shape)}, expected {tuple(own[name].shape)}")
    if problems:
        raise errors.DataError(f"{source}: {'; '.join(problems)}")
    merged = {**own, **{k: v.to(own[k].dtype) for k, v in tensors.items()}}
    sae.load_state_dict(merged)
    sae.eval()


def _origin(sae: SAE, meta: dict[str, Any]) -> dict[str, Any]:
    return {"version": __version__, "config": sae.cfg.to_dict(), "scale": meta.get("scale", 1.0),
            "layer": meta.get("layer"), "dataset": meta.get("dataset"), "run_id": meta.get("run_id"),
            "tokens": meta.get("tokens")}


def detect(path: pathlib.Path) -> str:
    """``saev`` (a file) or ``saelens`` (a directory with cfg.json), or a DataError saying what was found."""
    path = pathlib.Path(path)
    if path.is_dir() and (path / SAELENS_CFG).is_file():
        return "saelens"
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(1) == b"{":
                return "saev"
        raise errors.DataError(f"{path}: not a saev checkpoint (saev's start with a JSON header line)")
    raise errors.NotFoundError(f"{path}: neither a saev checkpoint file nor a SAELens directory ({SAELENS_CFG})")


def read_foreign(path: pathlib.Path) -> tuple[str, SAE, dict[str, Any]]:
    """(format, SAE, its header or cfg) of a saev file or SAELens directory."""
    fmt = detect(path)
    sae, info = read_saev(path) if fmt == "saev" else read_saelens(path)
    return fmt, sae, info


def file_sha256(path: pathlib.Path) -> str:
    """SHA-256 of a file, or of a directory's files (sorted names and contents): an imported SAE's identity."""
    path = pathlib.Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in ([path] if path.is_file() else path.iterdir()) if p.is_file()):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()

"""SAE files: ``weights.safetensors`` + ``config.json`` (schema, SAE config, normalisation scale, dataset, version)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from saev_ops import __version__, atomic, errors
from saev_ops.sae.config import SAEConfig
from saev_ops.sae.modules import SAE, build_sae

SCHEMA = 1


def save_sae(sae: SAE, directory: pathlib.Path, *, scale: float, dataset_hash: str, layer: int,
             extra: dict[str, Any] | None = None) -> None:
    """Write atomically: files go to ``directory.tmp``, which then replaces ``directory``. An archetypal SAE is written
    fused (a plain SAE of its encoder's family, the same function), with its own config as ``trained_as``."""
    from safetensors.torch import save_file

    directory = pathlib.Path(directory)
    if sae.cfg.arch == "archetypal":
        extra = {**(extra or {}), "trained_as": sae.cfg.to_dict()}
        sae = sae.fused()  # type: ignore[operator]  # an archetypal SAE has it
    tmp = atomic.fresh_dir(directory.with_name(directory.name + ".tmp"))
    save_file({k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}, str(tmp / "weights.safetensors"))
    cfg = {"schema": SCHEMA, "sae": sae.cfg.to_dict(), "scale": scale, "dataset": dataset_hash, "layer": layer,
           "saev_ops_version": __version__, **(extra or {})}
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    atomic.replace_dir(tmp, directory)


def load_sae(directory: pathlib.Path, device: str = "cpu") -> tuple[SAE, dict[str, Any]]:
    from safetensors.torch import load_file

    directory = pathlib.Path(directory)
    try:
        meta = json.loads((directory / "config.json").read_text())
    except FileNotFoundError:
        raise errors.DataError(f"{directory / 'config.json'}: missing SAE config") from None
    if meta.get("schema") != SCHEMA:
        raise errors.DataError(
            f"{directory / 'config.json'}: schema {meta.get('schema')}, this saev-ops reads {SCHEMA}")
    sae = build_sae(SAEConfig.from_dict(meta["sae"]))
    sae.load_state_dict(load_file(str(directory / "weights.safetensors"), device="cpu"))
    return sae.to(device).eval(), meta

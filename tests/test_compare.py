"""Dictionary similarity: a planted dictionary is recovered by matching, unrelated ones are not, `runs compare`."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from saev_ops import errors
from saev_ops.cli import cli
from saev_ops.explore.compare import compare_runs
from saev_ops.registry import Registry
from saev_ops.sae import SAEConfig, build_sae
from saev_ops.sae.compare import dictionary_similarity
from saev_ops.sae.io import save_sae
from tests.helpers import make_dataset


def _with_decoder(rows: torch.Tensor) -> torch.nn.Module:
    sae = build_sae(SAEConfig.of(arch="topk", d_model=rows.shape[1], d_sae=rows.shape[0], k=2))
    with torch.no_grad():
        sae.W_dec.copy_(rows / rows.norm(dim=1, keepdim=True))
    return sae


def test_planted_dictionary_is_recovered_by_matching() -> None:
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(48, 24, generator=g)
    perm = torch.randperm(48, generator=g)
    noisy = atoms[perm] + 0.05 * torch.randn(48, 24, generator=g)
    sim = dictionary_similarity(_with_decoder(atoms), _with_decoder(noisy * 3.0))  # the norm does not matter
    assert sim.matched is not None and sim.matched > 0.99 and sim.matched_above == 1.0
    assert sim.best_match_ab > 0.99 and sim.best_match_ba > 0.99
    assert sim.pairs is not None
    # atom i of A is matched with the B row that holds it: B[j] = atoms[perm[j]]
    assert {(int(a), int(b)) for a, b in sim.pairs} == {(int(perm[j]), j) for j in range(48)}
    other = dictionary_similarity(_with_decoder(atoms), _with_decoder(torch.randn(48, 24, generator=g)))
    assert other.matched is not None and other.matched < 0.6 and other.matched_above == 0.0


def test_wider_dictionary_and_the_matching_limit() -> None:
    g = torch.Generator().manual_seed(1)
    atoms = torch.randn(16, 8, generator=g)
    wide = torch.cat([atoms, torch.randn(16, 8, generator=g)])  # B holds A's atoms and 16 more
    sim = dictionary_similarity(_with_decoder(atoms), _with_decoder(wide))
    assert sim.best_match_ab == pytest.approx(1.0) and sim.best_match_ba < 1.0
    assert sim.matched == pytest.approx(1.0)
    capped = dictionary_similarity(_with_decoder(atoms), _with_decoder(wide), max_matching=20)
    assert capped.matched is None and capped.best_match_ab == pytest.approx(sim.best_match_ab)


def test_runs_compare(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    make_dataset(reg, name="d", d_model=8, status="complete")
    g = torch.Generator().manual_seed(2)
    atoms = torch.randn(16, 8, generator=g)
    ids = []
    for i, (rows, layer) in enumerate([(atoms, 11), (atoms.flip(0), 11), (torch.randn(16, 8, generator=g), 6)]):
        sae = _with_decoder(rows)
        ((run, _),) = reg.add_runs("d", [{"sae": sae.cfg.to_dict(), "layer": layer, "tokens": "patches", "i": i}])
        save_sae(sae, tmp_path / f"sae{i}", scale=1.0, dataset_hash="h", layer=layer)
        reg.transition_run(run.id, "running")
        reg.transition_run(run.id, "completed", checkpoint_path=str(tmp_path / f"sae{i}"))
        ids.append(run.id)
    res = CliRunner().invoke(cli, ["--db", url, "runs", "compare", str(ids[0]), str(ids[1]), "--format", "json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["matched"] == pytest.approx(1.0) and row["matched>0.9"] == "100.0%"
    assert row["init_ab"] is None  # these configs name no seed or train settings: no initial decoder to rebuild
    with pytest.raises(errors.ConfigError, match="read different layers"):
        compare_runs(reg, (ids[0], ids[2]))
    ((queued, _),) = reg.add_runs("d", [{"sae": SAEConfig.of(d_model=8).to_dict(), "layer": 11, "tokens": "patches"}])
    res = CliRunner().invoke(cli, ["--db", url, "runs", "compare", str(ids[0]), str(queued.id)])
    assert res.exit_code == 1 and f"run {queued.id} is queued" in res.output
    assert np.isfinite(row["best_match_ab"])


def test_runs_compare_reports_the_shared_initialisation(tmp_path: pathlib.Path) -> None:
    """Every run of a sweep with the default seed starts from nearly the same decoder: a ReLU-512 and a TopK-1024
    "matched" at 0.978 after 97 steps. Each figure now comes with the same figure at initialisation, and a warning."""
    from saev_ops.sae import build_sae

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    make_dataset(reg, name="d", d_model=32, status="complete")
    ids = []
    for i, (arch, d_sae, seed) in enumerate([("relu", 64, 0), ("topk", 128, 0), ("topk", 128, 7)]):
        cfg = SAEConfig.of(arch=arch, d_model=32, d_sae=d_sae, k=4)
        sae = build_sae(cfg, seed=seed)  # "trained" zero steps: the decoder is where it started
        config = {"sae": cfg.to_dict(), "lr": 1e-3, "seed": seed, "layer": 11, "tokens": "patches", "train": {}}
        ((run, _),) = reg.add_runs("d", [config])
        save_sae(sae, tmp_path / f"sae{i}", scale=1.0, dataset_hash="h", layer=11)
        reg.transition_run(run.id, "running")
        reg.transition_run(run.id, "completed", checkpoint_path=str(tmp_path / f"sae{i}"))
        ids.append(run.id)
    res = CliRunner().invoke(cli, ["--db", url, "runs", "compare", *map(str, ids), "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = {(r["run_a"], r["run_b"]): r for r in json.loads(res.stdout)}
    same = rows[(ids[0], ids[1])]
    assert same["init_ab"] == pytest.approx(same["best_match_ab"]) and same["init_ab"] > 0.5
    assert rows[(ids[1], ids[2])]["init_ab"] < 0.5
    assert f"warning: runs {ids[0]} and {ids[1]} started from nearly the same decoder" in res.stderr
    assert f"runs {ids[1]} and {ids[2]}" not in res.stderr

"""The run config's one owner (saev_ops.runconfig.RunConfig): what grid expansion produces, the registry stores and
the training job reads back, with its identity and typed parameters."""

from __future__ import annotations

import json
import pathlib

import pytest

from saev_ops import errors
from saev_ops.registry import Registry
from saev_ops.runconfig import RUN_KEY_DEFAULTS, RunConfig, RunKeys, TrainSettings, params_of, run_identity
from saev_ops.sweeps import parse_sweep
from saev_ops.sweeps.spec import RUN_KEYS
from saev_ops.sweeps.submit import bind_configs, job_for_runs
from tests.helpers import make_dataset
from tests.shard_helpers import write_dataset

ENTRY = {**RUN_KEY_DEFAULTS, "arch": "topk", "d_sae": 64, "k": 4, "lr": 1e-3, "layer": 7}


def test_a_run_config_round_trips_through_what_the_registry_stores() -> None:
    cfg = RunConfig.from_entry(ENTRY, 32, TrainSettings(batch_size=64))
    assert cfg.sae.d_model == 32 and cfg.sae.k == 4 and cfg.lr == 1e-3 and cfg.layer == 7
    stored = cfg.stored()
    assert RunConfig.from_stored(stored) == cfg
    assert cfg.identity() == run_identity(stored) and cfg.params() == params_of(stored)
    assert cfg.params()["k"] == 4 and cfg.params()["batch_size"] == 64
    relu = RunConfig.from_entry({**ENTRY, "arch": "relu"}, 32, TrainSettings())
    assert relu.params()["k"] is None  # a field its architecture does not read
    # an old name of a selection is read as its current one, with the identity the old name had
    old = RunConfig.from_entry({**ENTRY, "tokens": "no-registers"}, 32, TrainSettings())
    assert old.tokens == "cls+patches"
    assert old.identity() == RunConfig.from_entry({**ENTRY, "tokens": "cls+patches"}, 32, TrainSettings()).identity()


def test_bad_values_are_refused_with_their_key() -> None:
    with pytest.raises(errors.ConfigError, match=r"lr: must be a finite number > 0, got -1"):
        RunConfig.from_entry({**ENTRY, "lr": -1}, 32, TrainSettings())
    with pytest.raises(errors.ConfigError, match=r"k must be in 1\.\.d_sae \(64\), got 100"):
        RunConfig.from_entry({**ENTRY, "k": 100}, 32, TrainSettings())
    imported = {"sae": RunConfig.from_entry(ENTRY, 32, TrainSettings()).sae.to_dict(), "layer": 7,
                "tokens": "patches", "imported": {"format": "saev"}}
    with pytest.raises(errors.ConfigError, match=r"without lr, seed, train \(an imported SAE's\?\) cannot be trained"):
        RunConfig.from_stored(imported)


def test_a_per_run_key_is_one_field() -> None:
    """The per-run keys are RunKeys' fields: the run config has them, the grid accepts them, their defaults fill
    expanded entries."""
    keys = set(RunKeys.model_fields)
    assert keys == {"lr", "seed", "layer", "tokens"} == set(RUN_KEY_DEFAULTS)
    assert keys <= set(RunConfig.model_fields) and keys <= RUN_KEYS
    assert set(RunConfig.model_fields) - keys == {"sae", "train"}


def test_a_job_names_each_run_by_the_identity_its_registry_holds(tmp_path: pathlib.Path) -> None:
    """The identity a job writes on its journal's lines is the run's config hash in the registry, for runs trained
    again from their stored rows (`saev-ops train RUN`) as for new ones."""
    path = write_dataset(tmp_path / "data", n_examples=40, layers=(3, 7), n_patches=16, d_model=32)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    make_dataset(reg, name="tiny", path=str(path), d_model=32, layers=[3, 7], tokens_per_example=17,
                 n_examples=40, status="complete")
    sidecar = json.loads((path / "saev_ops.json").read_text())
    reg.update_dataset("tiny", extra={"metadata_hash": sidecar["content_hash"], "token_layout": sidecar["token_layout"]})
    spec = parse_sweep("name: s\ndataset: tiny\nbase: {arch: topk, d_sae: 64, layer: 7}\ngrid: {k: [4, 8]}\n")
    configs = bind_configs(spec, 32)
    reg.get_or_create_sweep("s", spec.text)
    added = reg.add_runs("tiny", [c.stored() for c in configs], sweep="s", identities=[c.identity() for c in configs])
    job = job_for_runs(reg, tuple(r.id for r, _ in added), url, runs_root=str(tmp_path / "runs"))
    assert [r.identity for r in job.runs] == [reg.get_run(r.id).config_hash for r, _ in added]
    assert [r.sae for r in job.runs] == [c.sae for c in configs] and job.settings == spec.settings


# Run identities of configs registered before the SAE config was a union by family (computed then, from the flat
# config every run stored): registries keep finding their runs.
IDENTITIES = [
    ({"arch": "relu", "l1_coeff": 1}, "fee78950fffff5417b95a41ff797129f3a2800a83bba2abf68e0fd3d5d51a358"),
    ({"arch": "topk", "k": 8}, "dc68a08898121c08df79f4cd9f7cdc2e08bd0911d13871f07433e7da1bbb80f6"),
    ({"arch": "topk", "k": 8, "topk_relu": False, "apply_b_dec_to_input": False},
     "7164b94e7da3040ffaca8f056d588561873b46579fc814e31c0278b5f7532d04"),
    ({"arch": "batchtopk", "k": 8, "batchtopk_rank": "row-share"},
     "8c0ee9397e44e26a3f7b95a53b416cd9fb2881db16400848a4f163f473d09bac"),
    ({"arch": "jumprelu", "l0_coeff": 3}, "88ed80bbc0d6d0793c118a3f1630ad05c693688b2e72c8202201d80faca0f109"),
    ({"arch": "matryoshka", "k": 8, "matryoshka_prefixes": [16, 32]},
     "fa73ade9076b067fd2464ced207ce1396e2aa2301cf694e4471b009693734e8b"),
    ({"arch": "signed-topk", "k": 8}, "5b23f8fe8b67eec9c62dd086ce56babde7dded1fd4d0c400a1082ba5393749e1"),
    ({"arch": "mp", "k": 8}, "51cc5a0e58add3c07bfa7a6470cbaf4e8f4e0afa5fd5751fb6f5eaab058b2280"),
    ({"arch": "omp", "k": 8}, "933db2f31ddcd6a389e6858f87e696ce0601b1f893e3254eaa96d5d19842184c"),
    ({"arch": "archetypal", "k": 8, "archetypal_delta": 4},
     "573846cd4d6b9438fd34b9a84f79a6b4bccd2248e7ec1dc91dc134953a30a81c"),
    ({"arch": "archetypal", "archetypal_encoder": "jumprelu", "l0_coeff": 0.5},
     "7c96c7b3e42c3fffcc2f9ae877edce66ce4130cc43ec26b1f39fda0f01e9a5d5"),
    ({"arch": "topk", "k": 8, "encoder_hidden": 16}, "55dd9cdf6ccc5827b900c4c4124806cd42136e264543d1decd7d02a82b54756e"),
]


@pytest.mark.parametrize(("fields", "identity"), IDENTITIES)
def test_run_identities_are_those_runs_had_before_the_union(fields: dict, identity: str) -> None:
    from saev_ops.registry import config_hash
    from saev_ops.sae.config import FIELDS

    train = TrainSettings(batch_size=64, n_tokens=6400)
    cfg = RunConfig.from_entry({**RUN_KEY_DEFAULTS, "lr": 1e-3, "d_sae": 64, **fields}, 32, train)
    assert config_hash("dataset", cfg.identity()) == identity
    # as such a run stored its config: every field of every family, at its default where not given
    flat = {**{name: field.get_default() for name, field in FIELDS.items()}, "d_model": 32, "d_sae": 64, **fields}
    flat["matryoshka_prefixes"] = list(flat["matryoshka_prefixes"])
    stored = {**cfg.stored(), "sae": flat}
    assert config_hash("dataset", run_identity(stored)) == identity
    assert RunConfig.from_stored(stored) == cfg  # read back: the family's own fields


def test_each_family_holds_only_its_own_fields() -> None:
    from saev_ops.sae.config import FAMILIES, SAEConfig

    relu = SAEConfig.of(arch="relu", d_model=8, d_sae=16, k=4, l1_coeff=0.5)  # a zipped k: checked, left out
    assert type(relu) is FAMILIES["relu"] and not hasattr(relu, "k") and "k" not in relu.to_dict()
    with pytest.raises(errors.ConfigError, match=r"k must be an integer, got 'four'"):
        SAEConfig.of(arch="relu", d_model=8, k="four")  # the type of a field its family does not read
    topk = SAEConfig.of(arch="topk", d_model=8, d_sae=16, k=4)
    assert topk.k == 4 and not hasattr(topk, "l1_coeff") and "batchtopk_rank" not in topk.to_dict()
    with pytest.raises(errors.ConfigError, match=r"SAE config: unknown keys \['kk'\]"):
        SAEConfig.from_dict({"arch": "topk", "d_model": 8, "kk": 3})
    assert SAEConfig.from_dict({"arch": "topk", "d_model": 8, "dead_steps": 3}) == SAEConfig.of(arch="topk", d_model=8)

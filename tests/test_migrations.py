"""Schema migrations: one head, up and down on SQLite and PostgreSQL, outdated/foreign databases, racing first opens."""

from __future__ import annotations

import multiprocessing as mp
import pathlib

import pytest
import sqlalchemy as sa

from saev_ops import errors
from saev_ops.registry import Registry, migrate
from saev_ops.registry.engine import create_registry_engine
from saev_ops.registry.schema_version import HEAD_REVISION, KNOWN_REVISIONS, VERSION_TABLE
from tests.helpers import make_dataset

TABLES = {"datasets", "sweeps", "runs", "metric_points", "metric_summaries", "inference_outputs", "run_params",
          "registry_identity",
          "evaluations", VERSION_TABLE}
VIEWS = {"run_table", "metric_history", "inference_lineage", "output_table"}


def test_exactly_one_head_and_it_is_the_expected_one() -> None:
    assert migrate.heads() == [HEAD_REVISION]
    assert KNOWN_REVISIONS[-1] == HEAD_REVISION


def _tables_and_views(engine: sa.Engine) -> tuple[set[str], set[str]]:
    insp = sa.inspect(engine)
    return set(insp.get_table_names()), set(insp.get_view_names())


def test_upgrade_downgrade_roundtrip(shared_db_url: str) -> None:
    engine = create_registry_engine(shared_db_url)
    migrate.run_upgrade(engine, "0001_initial")
    tables, views = _tables_and_views(engine)
    assert TABLES - {"run_params", "evaluations", "registry_identity"} <= tables and not (VIEWS & views)
    migrate.run_upgrade(engine, "head")
    tables, views = _tables_and_views(engine)
    assert TABLES <= tables and VIEWS <= views
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == HEAD_REVISION
    migrate.run_downgrade(engine, "0001_initial")
    assert not (VIEWS & _tables_and_views(engine)[1])
    migrate.run_downgrade(engine, "base")
    tables, views = _tables_and_views(engine)
    assert tables <= {VERSION_TABLE} and not views
    migrate.run_upgrade(engine, "head")  # and back up again on the same database
    reg = Registry(shared_db_url)
    make_dataset(reg)
    assert reg.get_dataset("inat21").name == "inat21"
    reg.close()
    engine.dispose()


def test_outdated_schema_names_the_upgrade_command(shared_db_url: str) -> None:
    engine = create_registry_engine(shared_db_url)
    migrate.run_upgrade(engine, "0001_initial")
    with pytest.raises(errors.SchemaOutdatedError, match=r"saev-ops db upgrade --db .*Back up|Back up.*saev-ops db upgrade"):
        Registry(shared_db_url)
    migrate.run_upgrade(engine)
    Registry(shared_db_url).close()
    engine.dispose()


def test_newer_unknown_revision_is_refused(shared_db_url: str) -> None:
    Registry(shared_db_url).close()
    engine = create_registry_engine(shared_db_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'"))
    with pytest.raises(errors.SchemaOutdatedError, match="newer saev-ops"):
        Registry(shared_db_url)
    engine.dispose()


def test_foreign_database_is_refused(shared_db_url: str) -> None:
    engine = create_registry_engine(shared_db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE someone_elses (x INTEGER)"))
    with pytest.raises(errors.NotASaevOpsDatabaseError, match="not a saev-ops registry"):
        Registry(shared_db_url)
    engine.dispose()


def test_garbage_file_is_refused(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(errors.RegistryError, match="junk.sqlite"):
        Registry(str(path))


def test_unreachable_postgres_is_one_clear_error() -> None:
    with pytest.raises(errors.RegistryUnavailableError, match="cannot open the registry database.*127.0.0.1:1"):
        Registry("postgresql://nobody@127.0.0.1:1/none")


def _open(url: str, barrier) -> str:  # noqa: ANN001
    barrier.wait()
    reg = Registry(url)
    with reg.engine.connect() as conn:
        rev = migrate.current_revision(conn)
    reg.close()
    return rev


@pytest.mark.slow
def test_concurrent_first_open_creates_one_schema(shared_db_url: str) -> None:
    n = 8
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            revs = pool.starmap(_open, [(shared_db_url, barrier)] * n)
    assert revs == [HEAD_REVISION] * n
    engine = create_registry_engine(shared_db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar() == 1
    engine.dispose()


@pytest.mark.slow
def test_many_jobs_opening_new_sqlite_files_at_once_all_succeed(tmp_path: pathlib.Path) -> None:
    """Eight processes open each brand-new SQLite registry at the same moment, 12 times: none may fail with
    "database is locked" (the WAL switch of a late opener used to, about once in 40 opens, while the first migrated)."""
    n = 8
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(n) as pool:
        for i in range(12):
            url = f"sqlite:///{tmp_path / f'r{i}.sqlite'}"
            assert pool.starmap(_open, [(url, manager.Barrier(n))] * n) == [HEAD_REVISION] * n


def test_run_params_are_backfilled_and_match_the_code(shared_db_url: str) -> None:
    """Migration 0005 freezes the hyperparameter columns; the code's list must equal them, and runs registered before
    it get their typed row from their config."""
    import importlib

    from saev_ops.registry import RunQuery
    from saev_ops.registry.params import PARAMS
    from tests.test_sweeps import insert_old_runs

    m = importlib.import_module("saev_ops._migrations.versions.0005_judgement")
    assert m.PARAMS == {k: t.__name__ for k, t in PARAMS.items()}
    engine = create_registry_engine(shared_db_url)
    migrate.run_upgrade(engine, "0004_run_identity")
    reg = Registry(shared_db_url, check_schema=False)
    ds = make_dataset(reg, name="old")
    (run,) = insert_old_runs(engine, ds, [{"sae": {"arch": "topk", "d_model": 8, "d_sae": 64, "k": 4}, "lr": 0.01,
                                           "seed": 3, "layer": 1, "tokens": "patches",
                                           "train": {"batch_size": 32, "n_tokens": 6400}}])
    migrate.run_upgrade(engine)
    rows = reg.list_runs(RunQuery(where=("d_sae=64", "grad_clip=0", "n_tokens>6000")))
    assert [r.run.id for r in rows] == [run.id]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT arch, k, lr FROM run_table")).one() == ("topk", 4, 0.01)
    migrate.run_downgrade(engine, "0004_run_identity")
    assert "run_params" not in sa.inspect(engine).get_table_names()
    reg.close()
    engine.dispose()


def test_held_out_and_output_dead_fracs_are_renamed_with_their_data(shared_db_url: str) -> None:
    """Migration 0007: `val/dead_frac` points become `val/unfired_frac`, the output column follows, and the views
    show the new names; downgrading gives the old ones back."""
    import sqlalchemy as sa

    engine = create_registry_engine(shared_db_url)
    migrate.run_upgrade(engine, "0006_ownership")
    reg = Registry(shared_db_url, check_schema=False)
    make_dataset(reg, name="d")
    (run, _), = reg.add_runs("d", [{"k": 1}])
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO metric_points (run_id, key, step, value, time) VALUES "
                             "(:r, 'val/dead_frac', 5, 0.25, CURRENT_TIMESTAMP), (:r, 'dead_frac', 5, 0.5, "
                             "CURRENT_TIMESTAMP)"), {"r": run.id})
        conn.execute(sa.text("INSERT INTO metric_summaries (run_id, key, step, value, updated_at) VALUES "
                             "(:r, 'val/dead_frac', 5, 0.25, CURRENT_TIMESTAMP), (:r, 'dead_frac', 5, 0.5, CURRENT_TIMESTAMP)"),
                     {"r": run.id})
        conn.execute(sa.text("INSERT INTO inference_outputs (run_id, dataset_id, path, n_rows, n_cols, nnz, dead_frac, "
                             "extra, created_at) VALUES (:r, 1, '/o', 10, 8, 3, 0.125, '{}', CURRENT_TIMESTAMP)"),
                     {"r": run.id})
    migrate.run_upgrade(engine)
    reg = Registry(shared_db_url)
    assert reg.summary(run.id) == {"val/unfired_frac": 0.25, "dead_frac": 0.5}
    (out,) = reg.list_outputs()
    assert out.metrics["unfired_frac"] == 0.125
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT val_unfired_frac, dead_frac FROM run_table")).one() == (0.25, 0.5)
        assert conn.execute(sa.text("SELECT unfired_frac FROM output_table")).scalar() == 0.125
    migrate.run_downgrade(engine, "0006_ownership")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT val_dead_frac FROM run_table")).scalar() == 0.25
        assert conn.execute(sa.text("SELECT dead_frac FROM output_table")).scalar() == 0.125
    reg.close()
    engine.dispose()


def test_token_names_become_one_vocabulary_in_run_params(shared_db_url: str) -> None:
    """Migration 0008: runs registered with `no-registers` are found by `tokens=cls+patches`; downgrading gives the
    old name back."""
    from saev_ops.registry import RunQuery
    from tests.test_sweeps import insert_old_runs

    engine = create_registry_engine(shared_db_url)
    migrate.run_upgrade(engine, "0007_unfired")
    reg = Registry(shared_db_url, check_schema=False)
    ds = make_dataset(reg, name="old")
    with engine.begin() as conn:
        (run,) = insert_old_runs(engine, ds, [{"sae": {"arch": "topk", "d_model": 8, "d_sae": 64, "k": 4},
                                               "lr": 0.01, "seed": 3, "layer": 1, "tokens": "no-registers"}])
        conn.execute(sa.text("INSERT INTO run_params (run_id, arch, tokens) VALUES (:r, 'topk', 'no-registers')"),
                     {"r": run.id})
    migrate.run_upgrade(engine)
    assert [r.run.id for r in reg.list_runs(RunQuery(where=("tokens=cls+patches",)))] == [run.id]
    migrate.run_downgrade(engine, "0007_unfired")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT tokens FROM run_params")).scalar() == "no-registers"
    reg.close()
    engine.dispose()

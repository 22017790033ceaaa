"""Schema identity: the Alembic version table's name and the head revision this code expects.

``HEAD_REVISION`` mirrors the single head of ``migrations/versions``; ``tests/test_migrations.py`` fails if the two
disagree or if the migrations ever grow a second head. Keeping it here lets opening a registry check the schema without
importing Alembic (which costs start-up time on every CLI call).
"""

from __future__ import annotations

VERSION_TABLE = "saev_ops_alembic_version"
HEAD_REVISION = "0008_token_names"
KNOWN_REVISIONS = ("0001_initial", "0002_query_views", "0003_integrity", "0004_run_identity", "0005_judgement",
                   "0006_ownership", "0007_unfired", "0008_token_names")

# Columns of the run_table view that come from metric summaries (see migrations/versions/0002_query_views.py).
RUN_TABLE_METRICS = ("loss", "mse", "nmse", "explained_variance", "l0", "dead_frac", "dense_frac")

# PostgreSQL: the role and function `saev-ops sql` runs user SQL through (registry/reader_setup.py, migration 0006).
READER_PREFIX = "saev_ops_reader_"
READ_FUNCTION = "saev_ops_read"
LEGACY_READER_ROLE = "saev_ops_reader"
"""The server-wide reader every registry shared before migration 0006 (which takes its grants on the schema away)."""


def reader_role(registry_id: str) -> str:
    """This registry's own reader role: granted to its owner alone, reading its schema alone."""
    return READER_PREFIX + registry_id[:16]

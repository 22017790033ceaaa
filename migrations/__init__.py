"""Alembic migrations of the saev-ops registry (installed as ``saev_ops._migrations``)."""

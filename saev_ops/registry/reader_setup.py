"""The reader role behind `saev-ops sql` on PostgreSQL: one per registry, set up by migration 0006 and by `saev-ops db
reader-setup`.

One DO block creates (if needed) this registry's own NOLOGIN role ``saev_ops_reader_<registry id>``
(:func:`~saev_ops.registry.schema_version.reader_role`), makes the current role (the registry's owner) its only
member, grants it USAGE and SELECT on this schema (and on tables created later), and creates ``saev_ops_read(query,
max_rows, max_bytes)``: a SECURITY DEFINER function owned by the reader, pinned to this schema (``SET search_path``
in its definition), that runs the query as a subquery and returns each row as JSON text, stopping after ``max_rows``
rows and refusing a result past ``max_bytes``. A registry made by an earlier saev-ops loses the server-wide role
``saev_ops_reader`` that every registry shared (its grants on this schema are revoked, its function dropped), so one
registry's owner cannot read another's. Being one block, a missing privilege rolls all of it back, so there is never
a function owned by a privileged role; the migration then warns (:func:`forward_warnings`) and `sql` refuses.

:data:`READ_BODY` is the function's body, compared with the stored one before every query
(``saev_ops.registry.sql``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from saev_ops import errors
from saev_ops.registry.engine import safe_url
from saev_ops.registry.schema_version import LEGACY_READER_ROLE, READ_FUNCTION, READER_PREFIX, reader_role

log = logging.getLogger(__name__)

READ_BODY = r"""
DECLARE
  r text;
  n bigint := 0;
  total bigint := 0;
BEGIN
  FOR r IN EXECUTE 'SELECT row_to_json(t)::text FROM (' || chr(10) || query || chr(10) || ') AS t' LOOP
    n := n + 1;
    IF max_rows IS NOT NULL AND n > max_rows THEN
      RETURN;
    END IF;
    total := total + octet_length(r);
    IF max_bytes IS NOT NULL AND total > max_bytes THEN
      RAISE EXCEPTION 'saev-ops: the result passed % bytes at row %', max_bytes, n
        USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN NEXT r;
  END LOOP;
END
"""

_SETUP = r"""
DO $do$
DECLARE
  s text := current_schema();
  rid text := (SELECT id FROM registry_identity LIMIT 1);
  role text;
  body text := $body$@BODY@$body$;
BEGIN
  IF rid IS NULL THEN
    RAISE EXCEPTION 'saev-ops: no registry_identity row in schema %', s;
  END IF;
  role := '@PREFIX@' || left(rid, 16);
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
    EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', role);
  END IF;
  IF NOT pg_has_role(current_user, role, 'MEMBER') THEN
    EXECUTE format('GRANT %I TO %I', role, current_user);
  END IF;
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s, role);
  EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', s, role);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO %I', s, role);
  -- what earlier versions made: one reader role for every registry on the server, and a two-argument function
  EXECUTE format('DROP FUNCTION IF EXISTS %I.@FN@(text, bigint)', s);
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = '@LEGACY@') THEN
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM @LEGACY@', s);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM @LEGACY@', s);
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM @LEGACY@', s);
  END IF;
  EXECUTE format('CREATE OR REPLACE FUNCTION %I.@FN@(query text, max_rows bigint, max_bytes bigint) '
                 'RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER '
                 'SET search_path = pg_catalog, %I, pg_temp AS %L', s, s, body);
  EXECUTE format('REVOKE ALL ON FUNCTION %I.@FN@(text, bigint, bigint) FROM PUBLIC', s);
  EXECUTE format('GRANT EXECUTE ON FUNCTION %I.@FN@(text, bigint, bigint) TO %I', s, current_user);
  -- a new owner needs CREATE on the schema at the moment of the change only
  EXECUTE format('GRANT CREATE ON SCHEMA %I TO %I', s, role);
  EXECUTE format('ALTER FUNCTION %I.@FN@(text, bigint, bigint) OWNER TO %I', s, role);
  EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM %I', s, role);
EXCEPTION WHEN insufficient_privilege THEN
  @ON_DENIED@
END
$do$
"""
_WARN = (
    "RAISE WARNING 'saev-ops: could not set up this registry''s reader role (%); `saev-ops sql` will refuse until "
    "`saev-ops db reader-setup` succeeds (docs/sql.md)', SQLERRM;"
)
_FAIL = (
    "RAISE EXCEPTION 'could not set up this registry''s reader role: %', SQLERRM "
    "USING ERRCODE = 'insufficient_privilege';"
)
_TEARDOWN = r"""
DO $do$
DECLARE
  s text := current_schema();
  role text := '@PREFIX@' || left((SELECT id FROM registry_identity LIMIT 1), 16);
BEGIN
  EXECUTE format('DROP FUNCTION IF EXISTS %I.@FN@(text, bigint, bigint)', s);
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', s, role);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM %I', s, role);
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', s, role);
    BEGIN
      EXECUTE format('DROP ROLE %I', role);
    EXCEPTION WHEN insufficient_privilege OR dependent_objects_still_exist THEN
      RAISE WARNING 'saev-ops: the reader role % stays (%)', role, SQLERRM;
    END;
  END IF;
END
$do$
"""


def _fill(template: str, **values: str) -> str:
    for key, value in {"PREFIX": READER_PREFIX, "FN": READ_FUNCTION, "LEGACY": LEGACY_READER_ROLE, **values}.items():
        template = template.replace(f"@{key}@", value)
    return template


def setup_sql(*, strict: bool) -> str:
    """The set-up statement; ``strict`` raises on a missing privilege, else it warns and changes nothing."""
    return _fill(_SETUP, BODY=READ_BODY, ON_DENIED=_FAIL if strict else _WARN)


def teardown_sql() -> str:
    """Undo :func:`setup_sql` in this schema (the migration's downgrade): the function, the grants, and the role when
    the current role may drop it."""
    return _fill(_TEARDOWN)


@contextlib.contextmanager
def forward_warnings(dbapi: Any) -> Iterator[None]:
    """While in the block, log the server's WARNING notices on ``dbapi`` (a psycopg connection): a migration that
    could not set up the reader says so where the user sees it, not only in the server's log."""

    def handler(diag: Any) -> None:
        if (diag.severity_nonlocalized or diag.severity) == "WARNING":
            log.warning("%s", diag.message_primary)

    dbapi.add_notice_handler(handler)
    try:
        yield
    finally:
        dbapi.remove_notice_handler(handler)


def setup_reader(engine: sa.Engine) -> str:
    """Create or repair this registry's reader role, its grants and function (PostgreSQL); returns the role's name."""
    if engine.dialect.name != "postgresql":
        raise errors.ConfigError("`db reader-setup` is for PostgreSQL registries; on SQLite `sql` needs no role")
    try:
        with engine.connect() as conn:
            role = reader_role(str(conn.execute(sa.text("SELECT id FROM registry_identity")).scalar_one()))
        with engine.begin() as conn:
            conn.execute(sa.text(setup_sql(strict=True)))
    except sa.exc.DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise errors.RegistryError(
            f"{first} (at {safe_url(engine.url)}); an administrator first runs `CREATE ROLE {role} NOLOGIN "
            f"NOINHERIT; GRANT {role} TO <this registry's role>;` (docs/sql.md)"
        ) from None
    return role

"""The reader role behind `saev-ops sql` on PostgreSQL: its set-up statement, run by migration 0003 and by
`saev-ops db reader-setup`.

One DO block creates (if needed) the NOLOGIN role ``saev_ops_reader``, makes the current role a member of it, grants it
USAGE and SELECT on this schema (and on tables created later), and creates ``saev_ops_read(query, max_rows)``: a
SECURITY DEFINER function owned by the reader that runs the query as a subquery. Being one block, a missing privilege
rolls all of it back, so there is never a function owned by a privileged role. The query text sits between newlines
so a trailing "-- comment" cannot swallow the closing parenthesis.
"""

from __future__ import annotations

import sqlalchemy as sa

from saev_ops import errors
from saev_ops.registry.engine import safe_url
from saev_ops.registry.schema import READ_FUNCTION, READER_ROLE

_SETUP = r"""
DO $do$
DECLARE
  s text := current_schema();
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
    EXECUTE 'CREATE ROLE {role} NOLOGIN NOINHERIT';
  END IF;
  IF NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
    EXECUTE format('GRANT {role} TO %I', current_user);
  END IF;
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO {role}', s);
  EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {role}', s);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {role}', s);
  EXECUTE format($f$
    CREATE OR REPLACE FUNCTION %I.{fn}(query text, max_rows bigint) RETURNS SETOF json
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, %I, pg_temp AS $body$
    BEGIN
      IF max_rows IS NULL THEN
        RETURN QUERY EXECUTE 'SELECT row_to_json(t) FROM (' || chr(10) || query || chr(10) || ') AS t';
      ELSE
        RETURN QUERY EXECUTE 'SELECT row_to_json(t) FROM (' || chr(10) || query || chr(10) || ') AS t LIMIT '
          || max_rows::text;
      END IF;
    END
    $body$ $f$, s, s);
  EXECUTE format('REVOKE ALL ON FUNCTION %I.{fn}(text, bigint) FROM PUBLIC', s);
  EXECUTE format('GRANT EXECUTE ON FUNCTION %I.{fn}(text, bigint) TO %I', s, current_user);
  -- a new owner needs CREATE on the schema at the moment of the change only
  EXECUTE format('GRANT CREATE ON SCHEMA %I TO {role}', s);
  EXECUTE format('ALTER FUNCTION %I.{fn}(text, bigint) OWNER TO {role}', s);
  EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM {role}', s);
EXCEPTION WHEN insufficient_privilege THEN
  {on_denied}
END
$do$
"""
_WARN = (
    "RAISE WARNING 'saev-ops: could not set up the reader role {role} (%); `saev-ops sql` will refuse until "
    "`saev-ops db reader-setup` succeeds (README, SQL on PostgreSQL)', SQLERRM;"
)
_FAIL = (
    "RAISE EXCEPTION 'could not set up the reader role {role}: %', SQLERRM "
    "USING ERRCODE = 'insufficient_privilege';"
)


def setup_sql(*, strict: bool) -> str:
    """The set-up statement; ``strict`` raises on a missing privilege, else it warns and changes nothing."""
    on_denied = (_FAIL if strict else _WARN).format(role=READER_ROLE)
    return _SETUP.format(role=READER_ROLE, fn=READ_FUNCTION, on_denied=on_denied)


def setup_reader(engine: sa.Engine) -> None:
    """Create or repair the reader role's grants and function in this registry's schema (PostgreSQL)."""
    if engine.dialect.name != "postgresql":
        raise errors.ConfigError("`db reader-setup` is for PostgreSQL registries; on SQLite `sql` needs no role")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(setup_sql(strict=True)))
    except sa.exc.DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise errors.RegistryError(
            f"{first} (at {safe_url(engine.url)}); an administrator first runs `CREATE ROLE {READER_ROLE} NOLOGIN "
            f"NOINHERIT; GRANT {READER_ROLE} TO <this role>;` (README, SQL on PostgreSQL)"
        ) from None

"""The changelog tables rolekit keeps in the database.

``rolekit_changelog`` holds one current row per repeatable; the append-only
``rolekit_changelog_history`` records every run for auditors (a trigger
refuses UPDATE and DELETE); ``rolekit_meta`` holds the schema version, the
salt of the secret fingerprints and the key of the password history.

Two more tables remember how far the database has gone, so that files that
are behind it are refused (:mod:`rolekit.pg.positions`):
``rolekit_rotation`` (the position of each family's state applied per
context, with an append-only history) and the append-only
``rolekit_password_history`` (a keyed fingerprint of every password rolekit
set, so a replaced password is never set again, and the digest of the
verifier it left on the server).

No table ever holds a secret: checksums carry salted fingerprints of them, an
HMAC keyed by the secrets file's own key (useless without the file), or
scrypt where a file has no key; the password history is an HMAC keyed by a
random key of this database's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from psycopg2 import sql

from rolekit.errors import ChangelogError
from rolekit.pg.session import ROLEKIT_TABLES, Session

SCHEMA_VERSION = 5

#: the tables of schema 4: positions of the rotation state, and password history
_GUARD_TABLES = [
    """CREATE TABLE rolekit_rotation (
        family text NOT NULL,
        group_oid bigint NOT NULL,
        context text NOT NULL,
        serial bigint NOT NULL,
        digest text NOT NULL,
        lineage text,
        state jsonb NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        applied_by text NOT NULL DEFAULT session_user,
        PRIMARY KEY (family, context))""",
    """CREATE TABLE rolekit_rotation_history (
        seq bigserial PRIMARY KEY,
        family text NOT NULL,
        group_oid bigint NOT NULL,
        context text NOT NULL,
        serial bigint NOT NULL,
        digest text NOT NULL,
        lineage text,
        state jsonb NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        applied_by text NOT NULL DEFAULT session_user)""",
    """CREATE TABLE rolekit_password_history (
        seq bigserial PRIMARY KEY,
        role text NOT NULL,
        role_oid bigint NOT NULL,
        context text NOT NULL,
        fingerprint text NOT NULL,
        verifier text,
        set_at timestamptz NOT NULL DEFAULT now(),
        set_by text NOT NULL DEFAULT session_user)""",
    """CREATE FUNCTION rolekit_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN
        RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
        END $$""",
    """CREATE TRIGGER rolekit_append_only
        BEFORE UPDATE OR DELETE OR TRUNCATE ON rolekit_rotation_history
        FOR EACH STATEMENT EXECUTE FUNCTION rolekit_append_only()""",
    """CREATE TRIGGER rolekit_append_only
        BEFORE UPDATE OR DELETE OR TRUNCATE ON rolekit_password_history
        FOR EACH STATEMENT EXECUTE FUNCTION rolekit_append_only()""",
]
_HISTORY_KEY = "password_history_key"
#: the key is made by the server (gen_random_uuid() draws on its strong random
#: source), so it never travels in a statement that log_statement could log
_NEW_HISTORY_KEY = sql.SQL(
    "INSERT INTO rolekit_meta SELECT %s,"
    " replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')"
)

_CREATE = [
    "CREATE TABLE rolekit_meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE rolekit_changelog (
        id text PRIMARY KEY,
        checksum text NOT NULL,
        context_expression text,
        context_used text,
        exec_type text NOT NULL CHECK (exec_type IN ('executed', 'reran')),
        applied_at timestamptz NOT NULL DEFAULT now(),
        applied_by text NOT NULL DEFAULT session_user,
        duration_ms double precision NOT NULL,
        target_oids bigint[] NOT NULL DEFAULT '{}',
        step_digests text[] NOT NULL DEFAULT '{}')""",
    """CREATE TABLE rolekit_changelog_history (
        seq bigserial PRIMARY KEY,
        id text NOT NULL,
        checksum text NOT NULL,
        context_expression text,
        context_used text,
        exec_type text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        applied_by text NOT NULL DEFAULT session_user,
        duration_ms double precision NOT NULL,
        passwords_set text[] NOT NULL DEFAULT '{}')""",
    """CREATE FUNCTION rolekit_history_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN
        RAISE EXCEPTION 'rolekit_changelog_history is append-only';
        END $$""",
    """CREATE TRIGGER rolekit_history_append_only
        BEFORE UPDATE OR DELETE ON rolekit_changelog_history
        FOR EACH STATEMENT EXECUTE FUNCTION rolekit_history_append_only()""",
    *_GUARD_TABLES,
]

# Schema 1 (rolekit 0.1) had no target_oids: repeatables then could not notice
# that a downgrade dropped and re-created their roles.
# Schema 2 had no step_digests (a re-run re-sent every password) and did not
# record whose password a run set.
# Schema 3 did not record positions or password history: a stale file could
# move the database backwards.
# Schema 4 kept no digest of the verifier a password set left on the server,
# so every member logged in to prove its password on every run.
_MIGRATE = {
    1: [
        "ALTER TABLE rolekit_changelog ADD COLUMN IF NOT EXISTS target_oids bigint[] NOT NULL DEFAULT '{}'"
    ],
    2: [
        "ALTER TABLE rolekit_changelog ADD COLUMN IF NOT EXISTS step_digests text[] NOT NULL DEFAULT '{}'",
        "ALTER TABLE rolekit_changelog_history"
        " ADD COLUMN IF NOT EXISTS passwords_set text[] NOT NULL DEFAULT '{}'",
    ],
    3: _GUARD_TABLES,
    4: ["ALTER TABLE rolekit_password_history ADD COLUMN IF NOT EXISTS verifier text"],
}


class Entry(NamedTuple):
    """The current changelog row of a repeatable."""

    id: str
    checksum: str
    target_oids: tuple[int, ...]
    step_digests: tuple[str, ...] = ()


class Changelog(NamedTuple):
    """What the changelog holds at the start of a run."""

    exists: bool
    salt: bytes
    entries: dict[str, Entry]
    version: int = SCHEMA_VERSION


def read(session: Session, *, fresh: bool = False) -> Changelog:
    """Read the meta and current rows: one round trip, none if the tables are absent.

    :param fresh: ask the catalog which tables exist now (after :func:`ensure`)
        instead of trusting what the run's first query found.
    """
    if fresh:
        row = session.fetchone(
            sql.SQL("SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL"),
            ROLEKIT_TABLES,
        )
        assert row is not None
        tables = {t for t, found in zip(ROLEKIT_TABLES, row, strict=True) if found}
    else:
        tables = set(session.tables_at_start)
    if "rolekit_meta" not in tables:
        if "rolekit_changelog" in tables:
            raise ChangelogError(
                "found rolekit_changelog without rolekit_meta: it was made by a rolekit older than "
                "0.1 or by another tool; rename or drop it and re-run"
            )
        return Changelog(False, b"", {})
    # row_to_json: the columns of whatever schema version the table has
    row = session.fetchone(
        sql.SQL(
            "SELECT (SELECT json_object_agg(key, value) FROM rolekit_meta),"
            " (SELECT coalesce(json_agg(row_to_json(c)), '[]') FROM rolekit_changelog c)"
        )
    )
    assert row is not None
    meta: dict[str, str] = row[0] or {}
    version = int(meta.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise ChangelogError(
            f"the changelog has schema version {version}, newer than this rolekit "
            f"({SCHEMA_VERSION}); upgrade rolekit"
        )
    salt = bytes.fromhex(meta.get("fingerprint_salt", ""))
    if version < SCHEMA_VERSION:
        return Changelog(True, salt, {}, version)  # migrated (and then read) by ensure()
    entries = {
        r["id"]: Entry(r["id"], r["checksum"], tuple(r["target_oids"]), tuple(r["step_digests"]))
        for r in row[1]
    }
    return Changelog(True, salt, entries)


def ensure(session: Session, changelog: Changelog, *, salt: bytes) -> Changelog:
    """Create (with *salt*) or migrate the tables; call only when a repeatable
    will run, so a no-op run writes nothing."""
    if not changelog.exists:
        for stmt in _CREATE:
            session.execute(sql.SQL(stmt))
        session.execute(
            sql.SQL(
                "INSERT INTO rolekit_meta VALUES ('schema_version', %s), ('fingerprint_salt', %s)"
            ),
            (str(SCHEMA_VERSION), salt.hex()),
        )
        session.execute(_NEW_HISTORY_KEY, (_HISTORY_KEY,), echo=False)
        return Changelog(True, salt, {})
    version = changelog.version
    if version == SCHEMA_VERSION:
        return changelog
    if version not in _MIGRATE:
        raise ChangelogError(f"the changelog has unknown schema version {version}")
    while version < SCHEMA_VERSION:
        for stmt in _MIGRATE[version]:
            session.execute(sql.SQL(stmt))
        if version == 3:
            session.execute(_NEW_HISTORY_KEY, (_HISTORY_KEY,), echo=False)
        version += 1
        session.execute(
            sql.SQL("UPDATE rolekit_meta SET value = %s WHERE key = 'schema_version'"),
            (str(version),),
        )
    return read(session, fresh=True)


class Run(NamedTuple):
    """One run of a repeatable, as the changelog records it."""

    id: str
    checksum: str
    context_expression: str | None
    context_used: str | None
    exec_type: str
    duration_ms: float
    target_oids: list[int]
    step_digests: list[str]
    passwords_set: list[str]


#: the columns of a :class:`Run` as ``json_to_recordset`` reads them (PostgreSQL
#: turns JSON arrays into the array columns)
_RUN_COLUMNS = (
    "id text, checksum text, context_expression text, context_used text, exec_type text,"
    " duration_ms float8, target_oids bigint[], step_digests text[], passwords_set text[],"
    " ord int"
)


def record(session: Session, runs: Sequence[Run]) -> None:
    """Upsert the current rows of *runs* and append them to the history, in
    their order: one statement for all, however many repeatables ran."""
    if not runs:
        return
    rows = [{**run._asdict(), "ord": i} for i, run in enumerate(runs)]
    session.execute(
        sql.SQL(
            "WITH r AS (SELECT * FROM json_to_recordset(%s::json) AS r({columns})),"
            " history AS (INSERT INTO rolekit_changelog_history (id, checksum,"
            " context_expression, context_used, exec_type, duration_ms, passwords_set)"
            " SELECT id, checksum, context_expression, context_used, exec_type, duration_ms,"
            " passwords_set FROM r ORDER BY ord)"
            " INSERT INTO rolekit_changelog (id, checksum, context_expression, context_used,"
            " exec_type, duration_ms, target_oids, step_digests)"
            " SELECT id, checksum, context_expression, context_used, exec_type, duration_ms,"
            " target_oids, step_digests FROM r ORDER BY ord"
            " ON CONFLICT (id) DO UPDATE SET checksum = EXCLUDED.checksum,"
            " context_expression = EXCLUDED.context_expression,"
            " context_used = EXCLUDED.context_used, exec_type = EXCLUDED.exec_type,"
            " applied_at = now(), applied_by = session_user,"
            " duration_ms = EXCLUDED.duration_ms, target_oids = EXCLUDED.target_oids,"
            " step_digests = EXCLUDED.step_digests"
        ).format(columns=sql.SQL(_RUN_COLUMNS)),
        (json.dumps(rows),),
        echo=False,
    )

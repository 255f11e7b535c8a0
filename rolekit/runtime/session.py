"""rolekit's handle on the migration connection.

Every statement rolekit sends goes through :class:`Session`, which:

* composes identifiers with :mod:`psycopg2.sql`, never string formatting;
* runs statements on the DBAPI cursor of Alembic's connection, so they share
  the migration's transaction, but bypasses SQLAlchemy's statement echo, so
  a bound verifier can never reach SQLAlchemy's log;
* renders statements as text in Alembic's offline (``--sql``) mode;
* suppresses server-side statement logging around secret-bearing statements
  when the migration user is allowed to.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from psycopg2 import sql
from psycopg2.extensions import TRANSACTION_STATUS_INERROR

from rolekit.errors import RolekitError

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext

log = logging.getLogger("rolekit")

Params = Sequence[Any] | None

#: settings that make the server log a statement's text, and the values that
#: stop them for one statement (the duration and sampling settings log the
#: text too, not only ``log_statement``)
QUIET_SETTINGS = {
    "log_statement": "none",
    "log_min_error_statement": "panic",
    "log_min_duration_statement": "-1",
    "log_min_duration_sample": "-1",
    "log_transaction_sample_rate": "0",
}


def render_offline(stmt: sql.Composable) -> str:
    """Render *stmt* without a connection, for Alembic's ``--sql`` mode.

    psycopg2 needs a live connection to quote, so offline mode walks the
    composition itself.  Only identifiers and SQL fragments are allowed:
    rolekit never needs a literal offline, and refusing them keeps a secret
    out of an offline script by construction.
    """
    if isinstance(stmt, sql.Composed):
        return "".join(render_offline(part) for part in stmt.seq)
    if isinstance(stmt, sql.Identifier):
        # PostgreSQL's quoting rule for identifiers: wrap in double quotes and
        # double any embedded double quote.
        return ".".join('"' + s.replace('"', '""') + '"' for s in stmt.strings)
    if isinstance(stmt, sql.SQL):
        return str(stmt.string)
    raise RolekitError(f"cannot render {type(stmt).__name__} in offline (--sql) mode")


class Session:
    """Executes (online) or prints (offline) rolekit's statements.

    :param migration_context: the Alembic migration context; its connection
        and transaction are reused.
    :param offline_server_version: the ``server_version_num`` to assume in
        offline mode, where there is no server to ask.
    """

    def __init__(
        self,
        migration_context: MigrationContext,
        *,
        offline_server_version: int | None = None,
    ) -> None:
        self.migration_context = migration_context
        self.offline = bool(migration_context.as_sql)
        self._offline_server_version = offline_server_version
        self._server_version: int | None = None
        self._can_suppress: bool | None = None
        self.round_trips = 0

    # -- online plumbing ---------------------------------------------------

    @property
    def dbapi_connection(self) -> Any:
        bind = self.migration_context.connection
        if bind is None:
            raise RolekitError("no database connection (offline mode?)")
        return bind.connection.dbapi_connection

    def _cursor_execute(self, stmt: sql.Composable, params: Params) -> Any:
        cur = self.dbapi_connection.cursor()
        self.round_trips += 1
        cur.execute(stmt, params)
        return cur

    def fetchall(self, stmt: sql.Composable, params: Params = None) -> list[tuple[Any, ...]]:
        """Run a catalog query; never valid offline."""
        if self.offline:
            raise RolekitError("catalog reads are not possible in offline (--sql) mode")
        with self._cursor_execute(stmt, params) as cur:
            return list(cur.fetchall())

    def fetchone(self, stmt: sql.Composable, params: Params = None) -> tuple[Any, ...] | None:
        rows = self.fetchall(stmt, params)
        return rows[0] if rows else None

    def scalar(self, stmt: sql.Composable, params: Params = None) -> Any:
        row = self.fetchone(stmt, params)
        return None if row is None else row[0]

    # -- facts about the server and the migration user ----------------------

    @property
    def server_version(self) -> int:
        """``server_version_num`` of the server (or the offline assumption)."""
        if self._server_version is None:
            if self.offline:
                if self._offline_server_version is None:
                    raise RolekitError(
                        "offline (--sql) mode needs the target server version: "
                        "pass -x pg_version=15 (or 14, 16, 17, 18)"
                    )
                self._server_version = self._offline_server_version
            else:
                self._server_version = int(self.scalar(sql.SQL("SHOW server_version_num")))
        return self._server_version

    @property
    def can_suppress_logging(self) -> bool:
        """Whether this user may switch off every log that could show a statement.

        Superusers may; from PostgreSQL 15 a superuser can also ``GRANT SET ON
        PARAMETER`` each of :data:`QUIET_SETTINGS` to the migration user.
        Managed services usually allow neither, and rolekit then carries on
        without suppression.
        """
        if self._can_suppress is None:
            if self.offline:
                self._can_suppress = False
            elif self.server_version < 150000:  # no parameter privileges before 15
                self._can_suppress = bool(
                    self.scalar(
                        sql.SQL("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                    )
                )
            else:
                checks = sql.SQL(" AND ").join(
                    sql.SQL("has_parameter_privilege({}, 'SET')").format(sql.Literal(name))
                    for name in QUIET_SETTINGS
                )
                self._can_suppress = bool(
                    self.scalar(
                        sql.SQL(
                            "SELECT rolsuper OR ({}) FROM pg_roles WHERE rolname = current_user"
                        ).format(checks)
                    )
                )
        return self._can_suppress

    # -- statements ----------------------------------------------------------

    def execute(self, stmt: sql.Composable, params: Params = None, *, echo: bool = True) -> None:
        """Run (or, offline, print) a statement that carries no secret.

        :param echo: log it at INFO (changes users care about) rather than
            DEBUG (rolekit's own bookkeeping).
        """
        if self.offline:
            if params:
                raise RolekitError("parameters cannot be rendered in offline (--sql) mode")
            impl = self.migration_context.impl
            impl.static_output(render_offline(stmt) + impl.command_terminator)
            return
        level = logging.INFO if echo else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "%s", stmt.as_string(self.dbapi_connection))
        self._cursor_execute(stmt, params).close()

    def execute_secret(self, stmt: sql.Composable, params: Sequence[Any], *, describe: str) -> None:
        """Run a statement whose parameters hold a secret (a SCRAM verifier).

        The statement is logged by rolekit as *describe* only.  Where the user
        may, server-side statement logging is switched off for exactly this
        statement, so neither ``log_statement=all`` nor an error report
        (``log_min_error_statement``) writes the verifier to the server log.
        """
        if self.offline:
            raise RolekitError(
                f"refusing to write a password verifier into an offline script ({describe}); "
                "run the upgrade online"
            )
        log.info("%s", describe)
        if not self.can_suppress_logging:
            self._cursor_execute(stmt, params).close()
            return
        names = list(QUIET_SETTINGS)
        if self.scalar(sql.SQL("SELECT current_setting('pg_stat_statements.track_utility', true)")):
            names.append("pg_stat_statements.track_utility")  # it would keep the statement text
        saved = self.fetchone(
            sql.SQL("SELECT {}").format(
                sql.SQL(", ").join(sql.SQL("current_setting(%s)") for _ in names)
            ),
            names,
        )
        assert saved is not None
        self._set_local(dict(zip(names, [*QUIET_SETTINGS.values(), "off"], strict=False)))
        try:
            self._cursor_execute(stmt, params).close()
        finally:
            # Restore for the rest of the transaction; if the statement failed
            # the transaction is aborted and rolls back the settings anyway.
            if self.dbapi_connection.get_transaction_status() != TRANSACTION_STATUS_INERROR:
                self._set_local(dict(zip(names, saved, strict=True)))

    def _set_local(self, values: dict[str, str]) -> None:
        """``SET LOCAL`` several settings in one round trip."""
        stmt = sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(sql.SQL("set_config(%s, %s, true)") for _ in values)
        )
        self._cursor_execute(stmt, [x for pair in values.items() for x in pair]).close()


def session_for(migration_context: MigrationContext) -> Session:
    """The one :class:`Session` of a migration context (created on first use).

    Sharing it means server facts are read once per run, however many
    operations and repeatables ask.
    """
    existing = getattr(migration_context, "_rolekit_session", None)
    if isinstance(existing, Session):
        return existing
    version: int | None = None
    env = getattr(migration_context, "environment_context", None)
    if env is not None:
        raw = env.get_x_argument(as_dictionary=True).get("pg_version")
        if raw:
            try:
                version = int(raw) * 10000 if int(raw) < 100 else int(raw)
            except ValueError:
                raise RolekitError(f"-x pg_version={raw!r} is not a major version number") from None
    created = Session(migration_context, offline_server_version=version)
    migration_context._rolekit_session = created  # type: ignore[attr-defined]
    return created

"""rolekit's handle on the migration connection.

Every statement rolekit sends goes through :class:`Session`, which:

* composes identifiers with :mod:`psycopg2.sql`, never string formatting;
* runs statements on the DBAPI cursor of Alembic's connection, so they share
  the migration's transaction, but bypasses SQLAlchemy's statement echo, so
  a bound verifier can never reach SQLAlchemy's log;
* renders statements as text in Alembic's offline (``--sql``) mode;
* switches server-side statement logging off around secret-bearing
  statements, and refuses to send them where it may not
  (:mod:`rolekit.pg.logsafety`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from psycopg2 import sql
from psycopg2.extensions import TRANSACTION_STATUS_INERROR

from rolekit.errors import RolekitError

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext

    from rolekit.pg.catalog import Reader
    from rolekit.pg.logsafety import LogSafety
    from rolekit.pg.verifiers import Ahead
    from rolekit.secrets import Secret

log = logging.getLogger(__name__)

Params = Sequence[Any] | None


#: rolekit's own tables, whose presence the first query of a run reports
ROLEKIT_TABLES = ("rolekit_meta", "rolekit_changelog")

#: migration context option (``opts``) with the server version to assume offline
PG_VERSION_OPTION = "rolekit_pg_version"


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
        self._facts_cache: tuple[int, str, bool, frozenset[str]] | None = None
        self._log_safety: LogSafety | None = None
        #: run by the environment on its control connection once the
        #: migration transaction committed (a check that needs the commit)
        self.after_commit: list[Callable[[Reader], None]] = []
        #: a statement users care about ran (a role changed, not bookkeeping):
        #: the standbys must replay the commit before the run reports success
        self.changed = False
        #: the logging settings saved before the first of consecutive
        #: secret-bearing statements, while the quiet ones are in effect
        self._quiet_saved: dict[str, str] | None = None
        #: verifiers derived ahead, while :meth:`verifiers_ahead` lasts
        self._ahead: Ahead | None = None

    # -- online plumbing ---------------------------------------------------

    @property
    def dbapi_connection(self) -> Any:
        bind = self.migration_context.connection
        if bind is None:
            raise RolekitError("no database connection (offline mode?)")
        return bind.connection.dbapi_connection

    def _cursor_execute(self, stmt: sql.Composable, params: Params) -> Any:
        if self._quiet_saved is not None:
            self._end_quiet()
        cur = self.dbapi_connection.cursor()
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

    def _facts(self) -> tuple[int, str, bool, frozenset[str]]:
        """Server version, database, superuser or not, and which of rolekit's tables
        existed when the run started: one round trip for all."""
        if self._facts_cache is None:
            tables = sql.SQL(", ").join(
                sql.SQL("to_regclass({}) IS NOT NULL").format(sql.Literal(t))
                for t in ROLEKIT_TABLES
            )
            row = self.fetchone(
                sql.SQL(
                    "SELECT current_setting('server_version_num')::int, current_database(),"
                    " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), {}"
                ).format(tables)
            )
            assert row is not None
            present = frozenset(
                t for t, found in zip(ROLEKIT_TABLES, row[3:], strict=True) if found
            )
            self._facts_cache = (int(row[0]), str(row[1]), bool(row[2]), present)
        return self._facts_cache

    @property
    def tables_at_start(self) -> frozenset[str]:
        """Which of :data:`ROLEKIT_TABLES` existed when the run first asked."""
        return self._facts()[3]

    @property
    def server_version(self) -> int:
        """``server_version_num`` of the server (or the offline assumption)."""
        if self.offline:
            if self._offline_server_version is None:
                raise RolekitError(
                    "offline (--sql) mode needs the target server version: "
                    "pass -x pg_version=15 (or 14, 16, 17, 18)"
                )
            return self._offline_server_version
        return self._facts()[0]

    @property
    def database(self) -> str:
        """The current database's name."""
        return self._facts()[1]

    @property
    def superuser(self) -> bool:
        """Whether the migration user is a superuser."""
        return self._facts()[2]

    def log_safety(self) -> LogSafety:
        """The logging settings around verifiers, read once per run."""
        if self._log_safety is None:
            from rolekit.pg.logsafety import assess  # only runs that send a verifier

            self._log_safety = assess(self, superuser=self.superuser)
        return self._log_safety

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
        self.changed |= echo
        if log.isEnabledFor(level):
            log.log(level, "%s", stmt.as_string(self.dbapi_connection))
        self._cursor_execute(stmt, params).close()

    def execute_many(self, stmts: Sequence[sql.Composable], *, echo: bool = True) -> None:
        """Run (or, offline, print) statements that carry no secret and take no
        parameters, online in one round trip: each is logged as :meth:`execute`
        logs it; the first that fails aborts the transaction, as it would alone."""
        if self.offline or len(stmts) <= 1:
            for stmt in stmts:
                self.execute(stmt, echo=echo)
            return
        level = logging.INFO if echo else logging.DEBUG
        self.changed |= echo
        texts = self._render(stmts, level)
        self._cursor_execute(sql.SQL("; ".join(texts)), None).close()

    def _render(self, stmts: Sequence[sql.Composable], level: int) -> list[str]:
        """*stmts* as the text to send, each logged at *level*: composed once for both."""
        texts = [stmt.as_string(self.dbapi_connection) for stmt in stmts]
        if log.isEnabledFor(level):
            for text in texts:
                log.log(level, "%s", text)
        return texts

    def execute_and_read(
        self,
        changes: Sequence[sql.Composable],
        bookkeeping: Sequence[sql.Composable],
        query: sql.Composable,
    ) -> list[tuple[Any, ...]]:
        """Run *changes* (logged as :meth:`execute_many` logs them) and *bookkeeping*
        (logged as ``echo=False``), then the read *query*, and return its rows: one
        round trip for all, the read seeing the changes.  Nothing takes parameters."""
        if self.offline:
            raise RolekitError("catalog reads are not possible in offline (--sql) mode")
        self.changed |= bool(changes)
        texts = self._render(changes, logging.INFO) + self._render(bookkeeping, logging.DEBUG)
        texts.append(query.as_string(self.dbapi_connection))
        # no parameters: a % in the text is sent as it is
        with self._cursor_execute(sql.SQL("; ".join(texts)), None) as cur:
            return list(cur.fetchall())

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
        self.changed = True
        quiet = self.log_safety().to_set
        if not quiet:
            self._start_next_verifier()
            self._cursor_execute(stmt, params).close()
            return
        if self._quiet_saved is None:
            # The settings are read just before, and restored just after, a run
            # of consecutive secret-bearing statements (the passwords of one
            # repeatable): restored before any other statement is sent.
            names = list(quiet)
            saved = self.fetchone(
                sql.SQL("SELECT {}").format(
                    sql.SQL(", ").join(sql.SQL("current_setting(%s)") for _ in names)
                ),
                names,
            )
            assert saved is not None
            self._set_local(quiet)
            self._quiet_saved = dict(zip(names, saved, strict=True))
        cur = self.dbapi_connection.cursor()
        self._start_next_verifier()
        try:
            cur.execute(stmt, params)
        finally:
            cur.close()
            if self.dbapi_connection.get_transaction_status() == TRANSACTION_STATUS_INERROR:
                # the transaction is aborted and rolls back the settings anyway
                self._quiet_saved = None

    def verifier(self, role: str, secret: Secret) -> str:
        """The SCRAM verifier to send for *role*'s *secret* (psycopg2's ``encrypt_password``)."""
        from rolekit.pg.verifiers import derive  # only runs that send a verifier

        if self._ahead is not None:
            return self._ahead.take(role, secret, self.dbapi_connection)
        return derive(secret, role, self.dbapi_connection)

    @contextlib.contextmanager
    def verifiers_ahead(self, pending: Sequence[tuple[str, Secret]]) -> Iterator[None]:
        """Derive the verifiers of *pending* (in the order :meth:`verifier` will be
        asked for them) each while the server stores the one before
        (:mod:`rolekit.pg.verifiers`)."""
        from rolekit.pg.verifiers import MIN_PASSWORDS, Ahead

        if self.offline or len(pending) < MIN_PASSWORDS or self._ahead is not None:
            yield
            return
        main = self.dbapi_connection
        engine = self.migration_context.connection.engine  # type: ignore[union-attr]

        def open_connection() -> Any:
            # Like the migration's (same engine, so the same URL and options);
            # detached, so closing it is ours whatever the engine's pool.
            raw = engine.raw_connection()
            raw.detach()
            return raw.dbapi_connection

        self._ahead = Ahead(pending, open_connection, main.get_parameter_status("scram_iterations"))
        try:
            yield
        finally:
            ahead, self._ahead = self._ahead, None
            ahead.close()

    def _start_next_verifier(self) -> None:
        """The next verifier is derived while the server runs the statement about to go."""
        if self._ahead is not None:
            self._ahead.start_next()

    def _end_quiet(self) -> None:
        """Restore the logging settings a run of secret-bearing statements switched off,
        for the rest of the transaction."""
        saved, self._quiet_saved = self._quiet_saved, None
        if saved and self.dbapi_connection.get_transaction_status() != TRANSACTION_STATUS_INERROR:
            self._set_local(saved)

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
    raw = migration_context.opts.get(PG_VERSION_OPTION)
    env = getattr(migration_context, "environment_context", None)
    if raw is None and env is not None:
        raw = env.get_x_argument(as_dictionary=True).get("pg_version")
    version: int | None = None
    if raw:
        try:
            version = int(raw) * 10000 if int(raw) < 100 else int(raw)
        except ValueError:
            raise RolekitError(f"-x pg_version={raw!r} is not a major version number") from None
    created = Session(migration_context, offline_server_version=version)
    migration_context._rolekit_session = created  # type: ignore[attr-defined]
    return created

"""The body of ``migrations/env.py``: Alembic's run plus rolekit's repeatables.

A project's env.py can be two lines::

    from alembic import context
    from rolekit.runtime.environment import run_migrations
    run_migrations(context)

Projects with their own env.py call :func:`apply_repeatables` inside their
``context.begin_transaction()`` block, after ``context.run_migrations()``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import psycopg2
import sqlalchemy.exc
from alembic.runtime.environment import EnvironmentContext
from psycopg2 import sql
from sqlalchemy import create_engine, event, pool

import rolekit.operations  # noqa: F401  (registers op.create_role_family & co.)
from rolekit.contexts import parse_contexts, primary_context
from rolekit.errors import RolekitError
from rolekit.repeatable.engine import RunContext, RunReport, apply, load_repeatables
from rolekit.rotation.state import RotationState
from rolekit.runtime.config import Settings, x_argument, x_flag
from rolekit.runtime.session import session_for

log = logging.getLogger("rolekit")

#: one key for every rolekit deploy: concurrent upgrades run one after another
ADVISORY_LOCK_KEY = 0x726F6C656B6974  # "rolekit"


def active_contexts(env: EnvironmentContext) -> tuple[frozenset[str], str | None]:
    """Contexts from ``-x context=...`` or ``ROLEKIT_CONTEXT``, and the first one."""
    raw = x_argument(env, "context") or os.environ.get("ROLEKIT_CONTEXT") or ""
    return parse_contexts(raw), primary_context(raw)


def _is_upgrade(env: EnvironmentContext) -> bool:
    # Alembic passes the command's step function as ``fn``; repeatables
    # belong to ``upgrade`` only (not downgrade, stamp or check).
    fn = env.get_context().opts.get("fn")
    return getattr(fn, "__name__", "") == "upgrade"


def run_context(env: EnvironmentContext, settings: Settings) -> RunContext:
    contexts, primary = active_contexts(env)
    raw_timeout = x_argument(env, "drain_timeout") or os.environ.get("ROLEKIT_DRAIN_TIMEOUT")
    try:
        timeout = float(raw_timeout) if raw_timeout else settings.drain_timeout
    except ValueError:
        raise RolekitError(f"drain_timeout={raw_timeout!r} is not a number of seconds") from None
    return RunContext(
        settings=settings,
        contexts=contexts,
        primary=primary,
        rotation=RotationState.load(settings.state_file),
        drain_timeout=timeout,
        terminate=x_flag(env, "terminate"),
    )


def apply_repeatables(
    env: EnvironmentContext, settings: Settings | None = None
) -> RunReport | None:
    """Run changed repeatables in the current migration transaction."""
    if not _is_upgrade(env):
        return None
    settings = settings or Settings.from_alembic_config(env.config)
    run = run_context(env, settings)
    session = session_for(env.get_context())
    return apply(session, run, load_repeatables(settings.repeatables_dir))


def verify_logins(url: str, report: RunReport) -> None:
    """Log in as each member whose password was just set and that may log in.

    Like the test step of AWS's rotation: a password that does not work is
    reported now, not by the first application that tries it.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    for role, secret in report.to_verify:
        try:
            conn = psycopg2.connect(
                host=parsed.host,
                port=parsed.port,
                dbname=parsed.database,
                user=role,
                password=secret.reveal(),
                connect_timeout=10,
                application_name="rolekit-verify",
            )
        except psycopg2.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RolekitError(
                f"login check failed for {role!r} after setting its password: {first}. The change "
                "is committed; fix the secret or the pg_hba.conf entry and re-run"
            ) from None
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT current_user, session_user"))
                row = cur.fetchone()
        finally:
            conn.close()
        log.info("rolekit: verified login as %s (session runs as %s)", role, row[0] if row else "?")


def _unsample_transactions(dbapi_connection: Any, _record: Any) -> None:
    """Keep ``log_transaction_sample_rate`` from logging the migration transaction.

    The server decides whether to log every statement of a transaction when
    the transaction starts, so the ``SET LOCAL`` rolekit does around a
    password is too late for it; a superuser turns it off for the session.
    """
    dbapi_connection.autocommit = True  # one round trip, no BEGIN/COMMIT
    try:
        with dbapi_connection.cursor() as cur:
            cur.execute(
                "SELECT set_config('log_transaction_sample_rate', '0', false)"
                " FROM pg_roles WHERE rolname = current_user AND rolsuper"
            )
    finally:
        dbapi_connection.autocommit = False


def database_error(exc: BaseException) -> RolekitError:
    """A server error (a failed statement, a restart, a dropped connection) as
    one clear line instead of a traceback.

    Only the first line of the server's message is kept: later lines can
    quote the statement, which must not carry a verifier into the output.
    """
    # When the connection broke, the rollback fails too ("connection already
    # closed") and hides the cause: report the first database error raised.
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, sqlalchemy.exc.DBAPIError | psycopg2.Error):
            exc = cause
        cause = cause.__context__
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    first = lines[0] if lines else type(orig).__name__
    return RolekitError(
        f"database error: {first}. The migration transaction did not commit, so nothing "
        "changed; fix the cause and re-run"
    )


def run_migrations(env: EnvironmentContext, **configure_kw: Any) -> None:
    """Run Alembic's migrations and rolekit's repeatables in one transaction."""
    settings = Settings.from_alembic_config(env.config)
    if env.is_offline_mode():
        env.configure(
            url=settings.require_url(),
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            transaction_per_migration=False,
            **configure_kw,
        )
        with env.begin_transaction():
            env.run_migrations()
            apply_repeatables(env, settings)
        return
    engine = create_engine(settings.require_url(), poolclass=pool.NullPool)
    event.listen(engine, "connect", _unsample_transactions)
    report: RunReport | None = None
    try:
        with engine.connect() as connection:
            env.configure(connection=connection, transaction_per_migration=False, **configure_kw)
            with env.begin_transaction():
                # Serialise concurrent deploys: the second waits, then finds the
                # revisions and repeatables already applied and does nothing.
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                env.run_migrations()
                report = apply_repeatables(env, settings)
    except (sqlalchemy.exc.DBAPIError, psycopg2.Error) as exc:
        raise database_error(exc) from None
    finally:
        engine.dispose()
    if report is not None and report.to_verify:
        verify_logins(settings.require_url(), report)

"""The body of ``migrations/env.py``: Alembic's run plus rolekit's repeatables.

A project's env.py can be two lines::

    from alembic import context
    from rolekit.runtime.environment import run_migrations
    run_migrations(context)

A project with its own env.py wraps its transaction in :class:`RolekitRun`::

    with engine.connect() as connection, RolekitRun(context, connection) as rolekit:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
            rolekit.apply_repeatables()

Everything that waits happens outside the migration transaction, on the
same connection in autocommit mode, holding no locks: the run lock of
concurrent deploys (bounded, reported), the drain of members the run
disables, and, after the commit, the termination of what ``terminate`` ends
and the login checks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import psycopg2
import sqlalchemy.exc
from alembic.runtime.environment import EnvironmentContext
from alembic.util import CommandError, messaging
from sqlalchemy import Connection, create_engine, pool

import rolekit.operations  # noqa: F401  (registers op.create_role_family & co.)
from rolekit.deployment.common import Progress, check_urls, stderr_progress
from rolekit.errors import DatabaseError, RolekitError, first_line
from rolekit.model import variables
from rolekit.model.contexts import parse_contexts, primary_context
from rolekit.pg import catalog, tracking
from rolekit.pg.catalog import Privileges
from rolekit.pg.control import ControlConnection
from rolekit.pg.logins import password_drift, verify_logins
from rolekit.pg.session import Session, session_for
from rolekit.project.config import Settings, seconds, x_argument, x_flag
from rolekit.project.state import RotationState
from rolekit.repeatable import forward
from rolekit.repeatable.base import Repeatable
from rolekit.repeatable.engine import RunReport, apply
from rolekit.repeatable.loader import load_repeatables, require_known_contexts, require_known_ids
from rolekit.repeatable.run import RunContext

if TYPE_CHECKING:
    # imported where used: a run that drains nothing (a no-op upgrade) needs
    # none of the drain, standby and pooler modules
    from rolekit.deployment.deployment import Deployment
    from rolekit.deployment.drain import Vigil

log = logging.getLogger(__name__)


class MigrationFailed(CommandError):
    """A :class:`RolekitError` on its way through Alembic.

    Alembic prints a ``CommandError`` as one ``FAILED: <message>`` line; the
    original error (with its exit code) is :attr:`error`.
    """

    def __init__(self, error: RolekitError) -> None:
        super().__init__(str(error))
        self.error = error


#: ``config.attributes`` key under which ``rolekit rotate --apply`` passes the
#: rotation state to apply, before it writes it to the state file: a
#: :class:`RotationState`, or a function making it, called again once the run
#: holds the database's run lock (so a rotation of another family that
#: committed meanwhile is in it)
ROTATION_ATTRIBUTE = "rolekit.rotation_state"
#: ``config.attributes`` key of the members of the families ``rolekit rotate``
#: moves (a frozenset): its upgrade runs only the repeatables that target them
SCOPE_ATTRIBUTE = "rolekit.scope"
#: ``config.attributes`` key of a function called with the control connection
#: after the commit and its checks, still holding the run lock: ``rotate``
#: confirms the catalog and writes its state file there
AFTER_COMMIT_ATTRIBUTE = "rolekit.after_commit"
#: ``config.attributes`` key of a :class:`~rolekit.deployment.drain.Vigil`: the
#: drain a ``rotate finish`` watched before the run lock
VIGIL_ATTRIBUTE = "rolekit.vigil"
#: ``config.attributes`` key of the settings a Python caller already resolved
#: (``rolekit.command`` with a database URL of its own)
SETTINGS_ATTRIBUTE = "rolekit.settings"


def settings_for(env: EnvironmentContext) -> Settings:
    """The settings a caller passed in, else those of the run's alembic.ini."""
    given = env.config.attributes.get(SETTINGS_ATTRIBUTE)
    return given if isinstance(given, Settings) else Settings.from_alembic_config(env.config)


def active_contexts(env: EnvironmentContext) -> tuple[frozenset[str], str | None, str]:
    """Contexts from ``-x context=...`` or ``ROLEKIT_CONTEXT``, the first one, and the text."""
    raw = x_argument(env, "context") or variables.CONTEXT.get() or ""
    return parse_contexts(raw), primary_context(raw), raw


def _is_upgrade(env: EnvironmentContext) -> bool:
    # Alembic passes the command's step function as ``fn``; repeatables
    # belong to ``upgrade`` only (not downgrade, stamp or check).  It is in
    # context_opts, readable before env.configure() (get_context() is not);
    # env.py hands us the ``alembic.context`` module, whose ``_proxy`` is the
    # EnvironmentContext itself.
    real = env if isinstance(env, EnvironmentContext) else getattr(env, "_proxy", None)
    fn = real.context_opts.get("fn") if isinstance(real, EnvironmentContext) else None
    return getattr(fn, "__name__", "") == "upgrade"


def _names(env: EnvironmentContext, name: str) -> frozenset[str]:
    return frozenset(n.strip() for n in x_argument(env, name).split(",") if n.strip())


def rotation_for(env: EnvironmentContext, settings: Settings) -> RotationState:
    """The state to apply: the one ``rolekit rotate --apply`` passed in, else the file."""
    given = env.config.attributes.get(ROTATION_ATTRIBUTE)
    if callable(given):
        given = given()
    return given if isinstance(given, RotationState) else RotationState.load(settings.state_file)


def run_context(
    env: EnvironmentContext, settings: Settings, repeatables: list[Repeatable]
) -> RunContext:
    """Build the run's context from ``-x`` arguments, the environment and the files."""
    contexts, primary, raw = active_contexts(env)
    rotation = rotation_for(env, settings)
    require_known_contexts(raw, settings, repeatables, rotation)
    timeout = seconds(
        "drain_timeout",
        x_argument(env, "drain_timeout"),
        settings.drain_timeout,
    )
    rerun = _names(env, "rerun")
    require_known_ids(
        rerun,
        (rep.id for rep in repeatables),
        unknown_is="-x rerun: no repeatable has the id {ids}; nothing was done",
    )
    quiet = seconds(
        "drain_quiet_period",
        x_argument(env, "drain_quiet_period"),
        settings.drain_quiet_period,
    )
    scope = env.config.attributes.get(SCOPE_ATTRIBUTE)
    return RunContext(
        settings=settings,
        contexts=contexts,
        primary=primary,
        rotation=rotation,
        drain_timeout=timeout,
        drain_quiet_period=quiet,
        terminate=x_flag(env, "terminate"),
        take_over=_names(env, "take_over"),
        replace_password=_names(env, "replace_password"),
        rerun=rerun,
        scope=scope if isinstance(scope, frozenset) else None,
        allow_verifier_in_log=x_flag(env, "allow_verifier_in_log", settings.allow_verifier_in_log),
    )


def prepare(
    control: ControlConnection,
    run: RunContext,
    repeatables: list[Repeatable],
    open_deployment: Callable[[], Deployment],
    vigil: Vigil | None = None,
) -> RunContext:
    """Everything that must be seen or waited for before the migration transaction.

    * first of all, files that are behind the database are refused
      (:func:`rolekit.repeatable.forward.require_forward`), at once and
      before any wait;
    * the members the run disables are drained here, on every host and
      pooler, holding no lock (*open_deployment* connects to them);
    * a member that may log in and rejects its secrets file's password is
      found here (its password is then sent again, unless it is in use: the
      replicas and poolers that tell are connected here too);
    * privileges the guards need are checked here, before any change.
    """
    active = [rep for rep in repeatables if rep.skip_reason(run) is None]
    run = forward.require_forward(control, run, active)
    names = {t for rep in active for t in rep.targets()}
    roles = catalog.roles(control, names) if names else {}

    def uses_look(primary: catalog.Reader, members: Sequence[str]) -> dict[str, str]:
        # imported here: a no-op upgrade never looks for uses
        from rolekit.deployment.usage import describe_uses

        deployment = open_deployment()
        deployment.check_standbys()
        found = deployment.look_once(members, primary, run.drain_quiet_period)
        users = sorted({use.user for use in found})
        return {u: describe_uses([use for use in found if use.user == u]) for u in users}

    run = replace(run, uses_look=uses_look)
    retiring = sorted({m for rep in active for m in rep.disables(run, roles)})
    if retiring:
        run = _drain(control, run, retiring, open_deployment, vigil)
    if run.settings.verify_logins and run.primary is not None:
        # Not the members leaving in an overlap either: a login as one of them
        # is a use to the drain of a finish running beside this run (another
        # family's), and would restart its quiet period.
        leaving = run.rotation.outgoing(run.primary)
        logging_in = [
            name
            for name, info in sorted(roles.items())
            if info.can_log_in_now
            and run.must_log_in(name)
            and name not in retiring
            and name not in leaving
        ]
        on_file = [(role, run.secret(role)[0]) for role in logging_in if run.has_secret(role)]
        checks = password_drift(control, on_file, run.secrets_file.path.name, run.primary)
        run = replace(run, password_checks=checks)
    # A member that may log in and whose password the run would replace is
    # looked up on every replica and pooler inside the migration transaction
    # (uses_look): connect to them now, holding no lock, not then.  Waits for
    # the login checks, which tell whether one would be replaced.
    places = run.settings.replicas or run.settings.poolers
    if (
        places
        and run.primary is not None
        and (run.password_checks is None or run.password_checks())
    ):
        open_deployment()
    return run


def before_draining(
    control: ControlConnection,
    deployment: Deployment,
    retiring: Sequence[str],
    *,
    terminate: bool,
    progress: Progress,
) -> Privileges:
    """What every drain checks and says before it waits, wherever it runs (in the
    upgrade, or in ``rotate finish`` before the run lock): no unknown standby,
    the privilege to end sessions when told to, what it cannot see."""
    from rolekit.deployment import drain

    deployment.check_standbys()
    privileges = catalog.privileges(control, retiring)
    if note := drain.visibility_note(privileges, retiring):
        progress(f"drain: {note}")
    if terminate:
        drain.require_terminate(privileges, retiring, "terminate")
    if deployment.tracking_schema is None:
        progress(f"drain: {tracking.unavailable_note(control)}")
    return privileges


def require_forward_files(
    control: ControlConnection,
    settings: Settings,
    context: str,
    rotation: RotationState,
    scope: frozenset[str] | None = None,
) -> None:
    """The stale-file rule of an upgrade in *context* applying *rotation*, checked
    without one (``rotate finish`` before it drains outside the run lock); *scope*
    holds the members of the families a rotation moves (``None``: all)."""
    repeatables = load_repeatables(settings.repeatables_dir)
    run = RunContext(
        settings=settings,
        contexts=parse_contexts(context),
        primary=primary_context(context),
        rotation=rotation,
        scope=scope,
    )
    active = [rep for rep in repeatables if rep.skip_reason(run) is None]
    forward.require_forward(control, run, active)


def _drain(
    control: ControlConnection,
    run: RunContext,
    retiring: list[str],
    open_deployment: Callable[[], Deployment],
    vigil: Vigil | None = None,
) -> RunContext:
    from rolekit.deployment import drain

    drain.check_quiet_period(run.drain_quiet_period, run.drain_timeout)
    deployment = open_deployment()
    privileges = before_draining(
        control, deployment, retiring, terminate=run.terminate, progress=run.progress
    )
    quiet_for = None if vigil is None else vigil.covers(retiring, run.drain_quiet_period)
    if quiet_for is not None:
        run.progress(
            f"drain: {', '.join(retiring)} drained (watched since before the run lock; "
            f"no use seen for {quiet_for:.1f}s)"
        )
        outcome = drain.Outcome(True, (), (), quiet_for)
    else:
        outcome = drain.wait_until_drained(
            deployment.sources(privileges, run.drain_quiet_period),
            retiring,
            timeout=run.drain_timeout,
            quiet_period=run.drain_quiet_period,
            progress=run.progress,
        )
    if not outcome.drained and not run.terminate:
        raise drain.timeout_error(outcome, run.drain_timeout, run.drain_quiet_period)
    run = replace(run, deployment_check=deployment.decisive_check, retiring=frozenset(retiring))
    if not outcome.drained:
        run = replace(run, terminate_after_commit=frozenset(retiring))
    return run


class RolekitRun:
    """One rolekit run around a migration transaction (see the module docs).

    :param connection: the SQLAlchemy connection the migration will use.
        Before its transaction and after the commit, rolekit borrows it in
        autocommit mode to hold the run lock, wait and check: no second
        connection, and nothing held while waiting.
    """

    def __init__(self, env: EnvironmentContext, connection: Connection | None = None) -> None:
        self.env = env
        self.connection = connection
        self.settings = settings_for(env)
        self.repeatables: list[Repeatable] = []
        self.run: RunContext | None = None
        self.report: RunReport | None = None
        self._session: Session | None = None
        self._deployment: Deployment | None = None
        self._connections = contextlib.ExitStack()

    def __enter__(self) -> RolekitRun:
        try:
            return self._enter()
        except RolekitError as exc:
            self._connections.close()
            raise MigrationFailed(exc) from None
        except BaseException:
            self._connections.close()
            raise

    def _open_deployment(self, control: ControlConnection, *, poolers: bool = True) -> Deployment:
        """The replicas and poolers, connected once per run and kept until its end.

        :param poolers: ``False`` when only the replicas are needed (the wait
            for replay after a commit no drain preceded): an unreachable
            pooler must not fail a migration that committed.
        """
        if self._deployment is None:
            from rolekit.deployment.deployment import Deployment

            progress = self.run.progress if self.run else stderr_progress
            self._deployment = self._connections.enter_context(
                Deployment.open(self.settings, control, progress=progress, poolers=poolers)
            )
        return self._deployment.on(control)

    def _enter(self) -> RolekitRun:
        if _is_upgrade(self.env):
            self.repeatables = load_repeatables(self.settings.repeatables_dir)
            self.run = run_context(self.env, self.settings, self.repeatables)
        if self.env.is_offline_mode():
            return self
        if self.connection is None:
            raise RolekitError("RolekitRun needs the migration's connection online")
        check_urls(self.settings)
        with ControlConnection.borrow(self.connection) as control:
            wait = seconds("lock_wait", x_argument(self.env, "lock_wait"), self.settings.lock_wait)
            progress = self.run.progress if self.run else stderr_progress
            control.acquire_run_lock(timeout=wait, progress=progress)
            if self.run is not None:
                attributes = self.env.config.attributes
                if callable(attributes.get(ROTATION_ATTRIBUTE)):  # again, under the run lock
                    self.run = replace(self.run, rotation=rotation_for(self.env, self.settings))
                self.run = prepare(
                    control,
                    self.run,
                    self.repeatables,
                    lambda: self._open_deployment(control),
                    _vigil(attributes),
                )
        return self

    def apply_repeatables(self) -> RunReport | None:
        """Run changed repeatables in the current migration transaction."""
        self._session = session_for(self.env.get_context())
        if self.run is None:
            return None
        self.report = apply(self._session, self.run, self.repeatables)
        return self.report

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        with self._connections:
            if exc is None and self.connection is not None:
                try:
                    with ControlConnection.borrow(self.connection) as control:
                        self._after_commit(control)
                except RolekitError as error:
                    raise MigrationFailed(error) from None
            if isinstance(exc, RolekitError):
                raise MigrationFailed(exc) from None

    def _after_commit(self, control: ControlConnection) -> None:
        run = self.run
        session = self._session or getattr(self.env.get_context(), "_rolekit_session", None)
        changed = isinstance(session, Session) and session.changed
        deployment = None
        if self._deployment is not None or (changed and self.settings.replicas):
            deployment = self._open_deployment(control, poolers=False)
        if deployment is not None and changed:
            deployment.wait_for_replay()  # NOLOGIN (or a new password) in effect everywhere
        if run is not None and run.terminate_after_commit:
            from rolekit.deployment import drain
            from rolekit.deployment.replicas import Host

            hosts = deployment.hosts if deployment else (Host("the server", control),)
            drain.terminate_and_confirm(
                hosts, sorted(run.terminate_after_commit), progress=run.progress
            )
        elif run is not None and run.retiring and deployment is not None:
            deployment.report_late_sessions(sorted(run.retiring))
        for check in session.after_commit if isinstance(session, Session) else ():
            check(control)
        if self.report is not None and self.report.to_verify and run is not None:
            verify_logins(control, self.report.to_verify)
        recorded = self.env.config.attributes.get(AFTER_COMMIT_ATTRIBUTE)
        if callable(recorded):
            recorded(control)


def _vigil(attributes: Mapping[str, Any]) -> Vigil | None:
    """The vigil ``rotate finish`` passed in, if any."""
    vigil = attributes.get(VIGIL_ATTRIBUTE)
    if vigil is None:
        return None
    from rolekit.deployment import drain  # imported here: only a finish passes one

    return vigil if isinstance(vigil, drain.Vigil) else None


def database_error(exc: BaseException) -> DatabaseError:
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
    return DatabaseError(
        f"database error: {first_line(exc)}. The migration transaction did not commit, so "
        "nothing changed; fix the cause and re-run"
    )


def _from_alembic_cli(env: EnvironmentContext) -> bool:
    """Whether the ``alembic`` command line runs us (not rolekit's or a user's Python)."""
    attributes = env.config.attributes
    return (
        env.config.cmd_opts is not None
        and SETTINGS_ATTRIBUTE not in attributes
        and ROTATION_ATTRIBUTE not in attributes
    )


def _database_url(settings: Settings) -> str:
    """The database URL; a bad one is a ``FAILED:`` line, not a traceback."""
    try:
        return settings.require_url()
    except RolekitError as exc:
        raise MigrationFailed(exc) from None


def run_migrations(env: EnvironmentContext, **configure_kw: Any) -> None:
    """Run Alembic's migrations and rolekit's repeatables in one transaction.

    Under the ``alembic`` command line a refusal exits with rolekit's exit
    code (3 for a guard, 5 for an unreachable server...), not Alembic's 255
    for every failure, so a deploy script can tell a stale checkout from a
    crash; the ``FAILED:`` line is Alembic's own.
    """
    try:
        _run_migrations(env, **configure_kw)
    except MigrationFailed as exc:
        if not _from_alembic_cli(env):
            raise
        messaging.log.error(str(exc))
        messaging.msg(f"FAILED: {exc}")
        raise SystemExit(int(exc.error.exit_code)) from None


def _run_migrations(env: EnvironmentContext, **configure_kw: Any) -> None:
    settings = settings_for(env)
    if env.is_offline_mode():
        env.configure(
            url=_database_url(settings),
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            transaction_per_migration=False,
            **configure_kw,
        )
        with RolekitRun(env) as rolekit, env.begin_transaction():
            env.run_migrations()
            rolekit.apply_repeatables()
        return
    engine = create_engine(_database_url(settings), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection, RolekitRun(env, connection) as rolekit:
            env.configure(connection=connection, transaction_per_migration=False, **configure_kw)
            with env.begin_transaction():
                env.run_migrations()
                rolekit.apply_repeatables()
    except (sqlalchemy.exc.DBAPIError, psycopg2.Error) as exc:
        raise MigrationFailed(database_error(exc)) from None
    finally:
        engine.dispose()

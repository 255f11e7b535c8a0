"""rolekit's Python API: each command of the ``rolekit`` CLI, returning data.

Like Alembic's ``command`` module beside its ``config``: :mod:`rolekit.cli`
only parses arguments, calls these and renders what they return.  Scripts,
tests and benchmarks call them directly.  Errors are
:class:`~rolekit.errors.RolekitError` subclasses carrying their exit code.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc
from alembic.runtime.migration import MigrationContext
from psycopg2 import sql
from sqlalchemy import create_engine, pool

from rolekit import scaffold
from rolekit.deployment.deployment import Deployment
from rolekit.errors import (
    ChangelogError,
    GuardError,
    RolekitError,
    SecretsError,
    StaleFileError,
    UnreachableError,
    first_line,
)
from rolekit.model.contexts import parse_contexts, primary_context
from rolekit.model.durations import parse_duration
from rolekit.model.family import RoleFamily
from rolekit.model.names import check_role_name
from rolekit.pg import catalog, password_history
from rolekit.pg.control import ControlConnection
from rolekit.pg.logins import login_problem
from rolekit.pg.session import Session
from rolekit.project.config import ConfigLike, Settings, load_settings
from rolekit.project.state import RotationState
from rolekit.repeatable import changelog, forward
from rolekit.repeatable.engine import plan as plan_repeatables
from rolekit.repeatable.loader import (
    load_repeatables,
    login_members,
    require_known_contexts,
    require_known_ids,
)
from rolekit.repeatable.run import RunContext
from rolekit.rotation import auto, fleet, inspection, workflow
from rolekit.rotation.creds_formats import FORMATS

# re-exported: ``rolekit.command.creds`` is the API behind ``rolekit creds``
from rolekit.rotation.handout import Creds as Creds
from rolekit.rotation.handout import creds as creds
from rolekit.rotation.workflow import Step, Transition
from rolekit.secrets import (
    DEFAULT_PASSWORD_LENGTH,
    Secret,
    SecretsFile,
    contexts_in,
    generate_password,
)

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

#: the results of the commands, public types all imported from here
InitReport = scaffold.InitReport
FamilyReport = inspection.FamilyReport

__all__ = [
    "ConfigLike",
    "Creds",
    "FamilyReport",
    "GeneratedPassword",
    "InitReport",
    "PlanRow",
    "Status",
    "Step",
    "Transition",
    "check",
    "clear_checksums",
    "creds",
    "family_of",
    "gen_password",
    "init",
    "plan",
    "require_context",
    "rotate_auto",
    "rotate_auto_all",
    "rotate_begin",
    "rotate_finish",
    "status",
]

log = logging.getLogger(__name__)


def require_context(raw: str | None) -> str:
    """The first context of *raw* (it picks secrets and login state), or refuse."""
    primary = primary_context(raw)
    if primary is None:
        raise RolekitError(
            "no context given: pass --context (e.g. --context prod) or set ROLEKIT_CONTEXT"
        )
    return primary


def _run_context(settings: Settings, raw: str | None) -> tuple[RunContext, list[Any]]:
    repeatables = load_repeatables(settings.repeatables_dir)
    rotation = RotationState.load(settings.state_file)
    require_known_contexts(raw, settings, repeatables, rotation)
    run = RunContext(
        settings=settings,
        contexts=parse_contexts(raw),
        primary=primary_context(raw),
        rotation=rotation,
    )
    return run, repeatables


def family_of(settings: Settings, group: str) -> RoleFamily:
    families = login_members(load_repeatables(settings.repeatables_dir))
    if group not in families:
        known = ", ".join(sorted(families)) or "none"
        raise RolekitError(
            f"no FamilyLogin repeatable declares family {group!r} in {settings.repeatables_dir} "
            f"(known: {known})"
        )
    return families[group].family


@contextlib.contextmanager
def _read_only_session(settings: Settings) -> Iterator[Session]:
    """A read-only session on the project's database, rolled back at the end."""
    engine = create_engine(settings.require_url(), poolclass=pool.NullPool)
    try:
        connection = engine.connect()
    except sqlalchemy.exc.OperationalError as exc:
        raise UnreachableError(f"cannot connect to the database: {first_line(exc)}") from None
    try:
        with connection.begin() as tx:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            yield Session(MigrationContext.configure(connection))
            tx.rollback()
    finally:
        connection.close()
        engine.dispose()


def _control(settings: Settings) -> contextlib.AbstractContextManager[ControlConnection]:
    return ControlConnection.open(settings.require_url(), application_name="rolekit")


# -- plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRow:
    id: str
    kind: str
    status: str
    reason: str
    context: str | None
    source: str


def plan(config: ConfigLike, context: str | None = None) -> list[PlanRow]:
    """Which repeatables the next upgrade would run, and why; changes nothing."""
    settings = load_settings(config)
    run, repeatables = _run_context(settings, context)
    with _read_only_session(settings) as session:
        active = [rep for rep in repeatables if rep.skip_reason(run) is None]
        _, stale = forward.check(session, run, active)
        if stale:  # what the upgrade would do: refuse before anything else
            raise StaleFileError("; ".join(stale) + ". The upgrade would refuse it")
        state = changelog.read(session)
        items = plan_repeatables(
            session, replace(run, salt=state.salt), repeatables, state, roles_must_exist=False
        ).items
    return [
        PlanRow(
            i.repeatable.id,
            type(i.repeatable).__name__,
            i.status.value,
            i.reason,
            i.repeatable.context.text if i.repeatable.context else None,
            i.repeatable.source,
        )
        for i in items
    ]


# -- rotate -----------------------------------------------------------------------


def _rotation_family(settings: Settings, family: str, context: str) -> RoleFamily:
    require_context(context)
    _run_context(settings, context)  # refuses an unknown context
    return family_of(settings, family)


def rotate_begin(
    config: ConfigLike,
    family: str,
    context: str,
    *,
    apply: bool = False,
    length: int = DEFAULT_PASSWORD_LENGTH,
) -> Transition:
    """steady -> overlap: the standby gets a fresh password and may log in."""
    settings = load_settings(config)
    fam = _rotation_family(settings, family, context)
    return workflow.rotate(settings, fam, context.lower(), Step.BEGIN, apply=apply, length=length)


def rotate_finish(
    config: ConfigLike,
    family: str,
    context: str,
    *,
    apply: bool = False,
    drain_timeout: float | None = None,
    quiet_period: float | None = None,
    terminate: bool = False,
) -> Transition:
    """overlap -> steady on the new member, once the old one drained.

    :param quiet_period: seconds the old member must go unseen on every host
        and pooler before it is disabled (default: the settings').
    """
    settings = load_settings(config)
    fam = _rotation_family(settings, family, context)
    extra = workflow.finish_x(drain_timeout, quiet_period, terminate)
    return workflow.rotate(
        settings, fam, context.lower(), Step.FINISH, apply=apply, upgrade_x=extra
    )


def rotate_auto(
    config: ConfigLike,
    family: str,
    context: str,
    *,
    apply: bool = False,
    max_age: str | None = None,
    publish: str | None = None,
    publish_format: str = "json",
    publish_timeout: float | None = None,
    move_timeout: float | None = None,
    quiet_period: float | None = None,
    git_commit: bool = False,
    git_push: bool = False,
    emit: Callable[[dict[str, Any]], None] = lambda event: None,
) -> str:
    """A whole rotation when the password apps use is due (see :mod:`rolekit.rotation.auto`).

    Returns ``not due``, ``rotated`` or ``resumed`` (a run interrupted before
    was completed); without *apply*, what it would do.  *emit* receives one
    event per step (due check, phase changes, publish, wait, git commit).
    *publish_timeout* defaults to ``[rolekit] publish_timeout`` (300 s).

    :raises PublishError: the publish command failed (the overlap stays).
    :raises DrainTimeoutError: the apps did not move by *move_timeout*.
    :raises GitError: a phase is applied but could not be committed or pushed.
    """
    settings = load_settings(config)
    plan = _auto_plan(
        settings,
        max_age,
        publish,
        publish_format,
        publish_timeout,
        move_timeout,
        quiet_period,
        git_commit,
        git_push,
    )
    fam = _rotation_family(settings, family, context)
    run = auto.run if apply else auto.dry_run
    return run(settings, fam, context.lower(), plan, emit)


def rotate_auto_all(
    config: ConfigLike,
    context: str,
    *,
    apply: bool = False,
    max_age: str | None = None,
    publish: str | None = None,
    publish_format: str = "json",
    publish_timeout: float | None = None,
    move_timeout: float | None = None,
    quiet_period: float | None = None,
    git_commit: bool = False,
    git_push: bool = False,
    emit: Callable[[dict[str, Any]], None] = lambda event: None,
) -> dict[str, str]:
    """``rotate --all auto``: every family with a state in *context*, in one run
    (see :mod:`rolekit.rotation.fleet`); returns what it did per family (without
    *apply*, what it would do).

    :raises FleetError: some families stay in the overlap (named); the others finished.
    """
    settings = load_settings(config)
    plan = _auto_plan(
        settings,
        max_age,
        publish,
        publish_format,
        publish_timeout,
        move_timeout,
        quiet_period,
        git_commit,
        git_push,
    )
    require_context(context)
    _run_context(settings, context)  # refuses an unknown context
    state = RotationState.load(settings.state_file)
    declared = login_members(load_repeatables(settings.repeatables_dir))
    families = [
        declared[name].family for name in sorted(declared) if state.get(name, context) is not None
    ]
    if not families:
        raise RolekitError(
            f"rotate --all: no family declared in {settings.repeatables_dir} has a state in "
            f"context {context!r} in {settings.state_file.name}; nothing to rotate"
        )
    if not apply:
        return fleet.dry_run_all(settings, families, context.lower(), plan, emit)
    return fleet.run_all(settings, families, context.lower(), plan, emit)


def _auto_plan(
    settings: Settings,
    max_age: str | None,
    publish: str | None,
    publish_format: str,
    publish_timeout: float | None,
    move_timeout: float | None,
    quiet_period: float | None,
    git_commit: bool,
    git_push: bool,
) -> auto.Plan:
    """The plan of an ``auto`` run, its options checked (exit 2) before anything runs."""
    policy = max_age if max_age is not None else settings.max_age
    if policy is None:
        raise RolekitError("rotate auto needs --max-age (e.g. 90d) or [rolekit] max_age")
    if publish_format not in FORMATS:
        raise RolekitError(f"--publish-format {publish_format!r}: one of {', '.join(FORMATS)}")
    if publish_timeout is None:
        publish_timeout = settings.publish_timeout
    if not 0 < publish_timeout < float("inf"):
        raise RolekitError(f"--publish-timeout {publish_timeout:g}: a number of seconds above 0")
    return auto.Plan(
        parse_duration(policy),
        publish=publish,
        publish_format=publish_format,
        publish_timeout=publish_timeout,
        move_timeout=move_timeout,
        quiet_period=quiet_period,
        git_commit=git_commit,
        git_push=git_push,
    )


# -- creds ------------------------------------------------------------------------


# -- status and check -------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    families: list[inspection.FamilyReport]
    last_runs: list[dict[str, Any]]
    #: replicas or poolers rolekit cannot reach or trust, unknown standbys
    deployment_problems: list[str] = field(default_factory=list)
    #: files behind the database (a stale checkout): the upgrade refuses them
    stale_files: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return (
            self.stale_files
            + self.deployment_problems
            + [f"{r.group}: {p}" for r in self.families for p in r.problems]
        )


@contextlib.contextmanager
def _deployment(
    settings: Settings, control: ControlConnection
) -> Iterator[tuple[Deployment | None, list[str]]]:
    """The replicas and poolers, or why not (a problem to report, not a crash)."""
    with contextlib.ExitStack() as stack:
        try:
            deployment = stack.enter_context(Deployment.open(settings, control, progress=log.info))
        except (UnreachableError, GuardError) as exc:
            yield None, [str(exc)]
            return
        try:
            deployment.check_standbys()
        except GuardError as exc:
            yield deployment, [str(exc)]
            return
        yield deployment, []


def status(config: ConfigLike, context: str | None = None, *, max_age: str | None = None) -> Status:
    """Each family against the catalog: login, passwords, drift, who uses each
    member on every host and pooler, and the age of the password apps use.

    With *max_age* (``90d``, ``12h``...; default ``[rolekit] max_age``), a
    family whose active password is older, or of unknown age, has a problem:
    ``check`` exits 1 on it.
    """
    settings = load_settings(config)
    max_age = max_age if max_age is not None else settings.max_age
    max_age_s = parse_duration(max_age) if max_age is not None else None
    run, repeatables = _run_context(settings, context)
    with _control(settings) as control, _deployment(settings, control) as (deployment, trouble):
        database = control.scalar(sql.SQL("SELECT current_database()"))
        set_at = inspection.password_set_times(control)

        families = sorted(login_members(repeatables).items())
        proven: frozenset[str] | None = None

        def check_password(role: str) -> str | None:
            nonlocal proven
            secrets = run.secrets_file
            if not secrets.path.exists() or not run.has_secret(role):
                return None
            if proven is None and run.primary is not None:
                # one query for every member the checks may ask about (those the
                # state lets log in): the server proves some without a login
                # (a superuser); the others' passwords are read as before
                members = {
                    m
                    for group, _ in families
                    if (state := run.rotation.get(group, run.primary)) is not None
                    for m in state.login
                    if run.has_secret(m)
                }
                on_file = [(m, run.secret(m)[0]) for m in sorted(members)]
                proven = password_history.proven(control, on_file, run.primary)
            if proven is not None and role in proven:
                return None
            return login_problem(control, role, run.secret(role)[0], secrets.path.name)

        reports = []
        for group, rep in families:
            applies = run.primary is not None and rep.skip_reason(run) is None
            state = run.rotation.get(group, run.primary) if run.primary else None
            report = inspection.inspect_family(
                control,
                rep.family,
                state,
                run.primary,
                database=database,
                password_set_at=set_at,
                state_missing=applies and state is None,
                check_password=check_password if settings.verify_logins and applies else None,
                deployment=deployment,
            )
            inspection.check_password_age(report, set_at, max_age_s, max_age or "")
            reports.append(report)
        runs = inspection.last_runs(control)
        active = [rep for rep in repeatables if rep.skip_reason(run) is None]
        try:
            _, stale = forward.check(control, run, active)
        except SecretsError as exc:  # status reports what it cannot check, and goes on
            stale = [f"cannot check the secrets file for retired passwords: {exc}"]
    return Status(reports, runs, trouble, stale)


def check(
    config: ConfigLike, context: str | None = None, *, max_age: str | None = None
) -> list[str]:
    """What the next upgrade would repair or refuse, and with *max_age* the
    passwords due for rotation (empty: nothing)."""
    return status(config, context, max_age=max_age).problems


# -- passwords --------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedPassword:
    role: str
    context: str
    written_to: Path | None
    password: Secret = field(repr=False)
    #: the context is new: no repeatable, secrets key or rotation state named it
    new_context: bool = False


def gen_password(
    config: ConfigLike,
    role: str,
    context: str,
    *,
    length: int | None = None,
    write: bool = False,
) -> GeneratedPassword:
    """A strong password; with *write*, stored under ``<role>.password.<context>``.

    :param length: at least the context's minimum; 32 characters by default.
    """
    settings = load_settings(config)
    check_role_name(role)
    context = require_context(context)
    wanted = DEFAULT_PASSWORD_LENGTH if length is None else length
    password = generate_password(max(wanted, settings.min_length(context)))
    path = settings.secrets_file(context)
    new_context = False
    if write:
        secrets = SecretsFile(path, repo_root=settings.root)
        with contextlib.suppress(RolekitError):
            new_context = (
                context
                not in contexts_in(secrets) | RotationState.load(settings.state_file).contexts()
            )
        secrets.set(role, context, password)
        secrets.ensure_fingerprint_key()
    return GeneratedPassword(role, context, path if write else None, Secret(password), new_context)


# -- changelog --------------------------------------------------------------------


def clear_checksums(config: ConfigLike, ids: Sequence[str]) -> list[str]:
    """Forget the checksums of repeatables *ids*, so the next upgrade runs them.

    Like Liquibase's ``clear-checksums``, for chosen changesets.  The
    append-only history records it.
    """
    settings = load_settings(config)
    with _control(settings) as control:
        if not catalog.table_exists(control, "rolekit_changelog"):
            raise ChangelogError("this database has no rolekit changelog yet: nothing to clear")
        known = {r[0] for r in control.fetchall(sql.SQL("SELECT id FROM rolekit_changelog"))}
        require_known_ids(
            ids, known, unknown_is="no changelog entry for {ids}; nothing was cleared"
        )
        control.fetchall(
            sql.SQL(
                "WITH gone AS (DELETE FROM rolekit_changelog WHERE id = ANY(%s)"
                " RETURNING id, checksum, context_expression)"
                " INSERT INTO rolekit_changelog_history (id, checksum, context_expression,"
                " context_used, exec_type, duration_ms)"
                " SELECT id, checksum, context_expression, NULL, 'cleared', 0 FROM gone"
            ),
            (list(ids),),
        )
    return sorted(set(ids))


# -- project setup ----------------------------------------------------------------


def init(
    config: str | os.PathLike[str] | AlembicConfig = "alembic.ini",
    *,
    family: str | None = None,
    members: Sequence[str] = (),
    contexts: Sequence[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> InitReport:
    """Add rolekit to the Alembic project of *config* (``rolekit init``).

    With *family* it also declares that role family: a first revision, its
    repeatables and its rotation state.  Reads no database: it can run before
    the database exists.  See :mod:`rolekit.scaffold`.
    """
    if (members or contexts) and not family:
        raise RolekitError(
            "--members and --contexts need --family (the group role the members belong to)"
        )
    spec = None
    if family:
        spec = scaffold.FamilySpec.parse(family, members, contexts or scaffold.DEFAULT_CONTEXTS)
    ini = config if isinstance(config, str | os.PathLike) else config.config_file_name
    if ini is None:
        raise RolekitError("the Alembic Config has no config_file_name: pass alembic.ini's path")
    return scaffold.init_project(ini, family=spec, force=force, dry_run=dry_run)

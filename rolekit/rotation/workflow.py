"""The phases of a rotation: ``begin`` and ``finish``.

Without ``--apply`` a phase only edits the state and secrets files, for a
deploy to apply (GitOps).  With ``--apply`` it also runs the upgrade, and the
**state file changes only once the database change committed**: the upgrade
applies the new state passed in memory, rolekit then checks the catalog
holds it, and only then writes the file.  A kill at any moment leaves file
and catalog agreeing, or in a state the next run completes:

* killed before the commit: nothing changed in the database, the file is as
  it was (``begin`` may have stored a fresh password for the standby, which
  nobody was handed; the next ``begin`` makes another);
* killed after the commit: the catalog is one phase ahead of the file;
  ``rolekit check`` names the step, and re-running it records it (``begin``
  keeps the password the server already has).

Two runs of one family never interleave: a lock file per family refuses a
second run on the same checkout, and an advisory lock per family refuses one
from another checkout against the same database (exit 4, at once).  Runs of
different families go side by side:

* the state file is written per family (:func:`rolekit.project.state.update`:
  a read-modify-write of that family's entries under a short file-wide lock),
  while the upgrade still holds the database's run lock, and the state an
  upgrade applies is read again once it holds that lock -- so no run applies
  or writes another family's state from before that family's commit;
* a ``finish`` drains its old member *before* its upgrade takes the run lock,
  keeping the watch open until the decisive check
  (:class:`rolekit.deployment.drain.Vigil`), so eight finishes wait out one
  quiet period, not eight.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from alembic import command as alembic_command

from rolekit.deployment import drain
from rolekit.deployment.deployment import Deployment
from rolekit.deployment.usage import Watch
from rolekit.errors import RolekitError, RotationStateError
from rolekit.model.family import RoleFamily
from rolekit.pg import positions
from rolekit.pg.control import ControlConnection
from rolekit.pg.family_catalog import FamilyCatalog
from rolekit.pg.logins import login_works
from rolekit.project.config import Settings, alembic_config, boolean, seconds
from rolekit.project.state import FamilyState, Phase, RotationState, locked, merged, update
from rolekit.runtime.environment import (
    AFTER_COMMIT_ATTRIBUTE,
    ROTATION_ATTRIBUTE,
    SCOPE_ATTRIBUTE,
    SETTINGS_ATTRIBUTE,
    VIGIL_ATTRIBUTE,
    MigrationFailed,
    before_draining,
    require_forward_files,
)
from rolekit.secrets import DEFAULT_PASSWORD_LENGTH, SecretsFile, generate_password


class Step(StrEnum):
    BEGIN = "begin"
    FINISH = "finish"


@dataclass(frozen=True)
class Transition:
    family: str
    context: str
    before: FamilyState
    after: FamilyState
    applied: bool = False
    #: the catalog was already there: a run interrupted after its commit was completed
    resumed: bool = False


@contextlib.contextmanager
def rotate_lock(
    settings: Settings, family: RoleFamily, apply: bool
) -> Iterator[ControlConnection | None]:
    """The checkout's lock of the family, and with ``--apply`` the database's."""
    with locked(settings.state_file, family.group):
        if not apply:
            yield None
            return
        with ControlConnection.open(
            settings.require_url(), application_name="rolekit-rotate"
        ) as control:
            control.try_rotate_lock(family.group)
            yield control


def _next(family: RoleFamily, context: str, current: FamilyState | None, step: Step) -> FamilyState:
    """The state *step* moves *current* to, one position further (no side effect)."""
    if current is None:
        raise RotationStateError(
            f"the rotation state has no state for {family.group!r} in context "
            f'{context!r}; add {{"login": ["{family.members[0]}"]}} first'
        )
    if step == Step.BEGIN:
        if current.phase != Phase.STEADY:
            raise RotationStateError(
                f"cannot begin: {family.group!r} ({context}) is in phase {current.phase.value!r} "
                f"(login: {', '.join(current.login) or 'none'}); run 'rolekit rotate "
                f"{family.group} finish' first"
            )
        (active,) = current.login
        standby = family.other(active)
        return current.advanced((active, standby), incoming=standby)  # steady -> overlap
    if current.phase != Phase.OVERLAP or current.incoming is None:
        raise RotationStateError(
            f"cannot finish: {family.group!r} ({context}) is in phase {current.phase.value!r}, "
            f"not in a rotation; run 'rolekit rotate {family.group} begin' first"
        )
    return current.advanced((current.incoming,))  # overlap -> steady on the incoming member


def _require_forward(
    control: ControlConnection,
    state: RotationState,
    family: RoleFamily,
    context: str,
    after: FamilyState,
) -> bool:
    """Refuse a state file behind the database, before anything is written.

    One exception: the database already holds exactly the position this step
    makes (a run killed after its commit, before it wrote the file).  The
    step then completes that run.

    :returns: whether the database already applied *after*.
    """
    recorded = positions.read(control, [family.group])
    target = state.copy()
    target.set(family.group, context, after)
    (done,) = positions.compare(target, [family.group], context, recorded)
    if done.verdict == positions.Verdict.SAME:
        return True
    findings = positions.compare(state, [family.group], context, recorded)
    positions.require_current(findings, state.path.name)
    return False


def _begin_secrets(
    settings: Settings,
    family: RoleFamily,
    context: str,
    after: FamilyState,
    control: ControlConnection | None,
    length: int,
) -> bool:
    """Give the standby a fresh password, unless an interrupted begin already did.

    :returns: whether the server already has the standby's password on file.
    """
    standby = after.preferred
    assert standby is not None
    secrets = SecretsFile(settings.secrets_file(context), repo_root=settings.root)
    if control is not None and secrets.has(standby, context):
        found = FamilyCatalog.read(control, family)
        info = found.roles.get(standby)
        if (
            info is not None
            and info.can_log_in_now
            and login_works(control, standby, secrets.get(standby, context).reveal())
        ):
            # The catalog is already in the overlap and the standby accepts the
            # password on file: an earlier begin committed and was killed
            # before writing the state file.  Keep that password.
            return True
    secrets.set(standby, context, generate_password(max(length, settings.min_length(context))))
    secrets.ensure_fingerprint_key()
    return False


@dataclass(frozen=True)
class Change:
    """What one rotation upgrade applies for a family: its states by context."""

    family: RoleFamily
    states: dict[str, FamilyState]


def _upgrade(
    settings: Settings,
    context: str,
    extra: Sequence[str],
    changes: Sequence[Change],
    vigil: drain.Vigil | None = None,
) -> RotationState:
    """Upgrade with *changes* applied over the state file, and write them to it once the
    catalog holds them (still under the run lock).

    :returns: the state file as written.
    """
    config = alembic_config(settings.ini_path)
    config.cmd_opts = argparse.Namespace(x=[f"context={context}", *extra])
    written: list[RotationState] = []

    def target() -> RotationState:  # read again under the run lock
        state = RotationState.load(settings.state_file)
        for change in changes:
            state = merged(state, change.family.group, change.states, change.family.members)
        return state

    def record(control: ControlConnection) -> None:
        for change in changes:
            for after in change.states.values():
                _confirm(control, change.family, after)
        for change in changes:
            written.append(
                update(
                    settings.state_file, change.family.group, change.states, change.family.members
                )
            )

    config.attributes[ROTATION_ATTRIBUTE] = target
    # Only these families' repeatables: another checkout may be rotating another
    # family, and this one's files are then behind on that family.
    config.attributes[SCOPE_ATTRIBUTE] = frozenset(
        member for change in changes for member in change.family.members
    )
    config.attributes[AFTER_COMMIT_ATTRIBUTE] = record
    config.attributes[SETTINGS_ATTRIBUTE] = settings
    if vigil is not None:
        config.attributes[VIGIL_ATTRIBUTE] = vigil
    try:
        alembic_command.upgrade(config, "head")
    except MigrationFailed as exc:
        raise exc.error from None
    if not written:  # an env.py without rolekit's run never called record()
        with ControlConnection.open(settings.require_url()) as control:
            record(control)
    return written[-1]


def _x_values(extra: Sequence[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in extra if "=" in arg)


@contextlib.contextmanager
def vigil(
    settings: Settings,
    retiring: Sequence[str],
    extra: Sequence[str],
    context: str,
    target: RotationState,
    scope: frozenset[str],
) -> Iterator[drain.Vigil | None]:
    """Drain *retiring* now, outside any lock, and keep watching while the caller upgrades.

    *scope* holds the members of the families the upgrade will move: their
    files are the ones checked first.

    The drain's timeout and quiet period are those the upgrade would use
    (*extra*'s ``-x`` values, else the settings').  With ``terminate`` there
    is no vigil: the upgrade waits, then ends the sessions, as it always did.

    :raises DrainTimeoutError: still in use at the timeout; nothing was changed.
    """
    given = _x_values(extra)
    if not retiring or boolean("-x terminate", given.get("terminate"), False):
        yield None
        return
    timeout = seconds("drain_timeout", given.get("drain_timeout"), settings.drain_timeout)
    quiet = seconds(
        "drain_quiet_period", given.get("drain_quiet_period"), settings.drain_quiet_period
    )
    drain.check_quiet_period(quiet, timeout)
    with (
        ControlConnection.open(settings.require_url(), application_name="rolekit-drain") as seer,
        Deployment.open(settings, seer, progress=drain.stderr_progress) as deployment,
    ):
        # the files first: a stale one is refused at once, not after a drain
        require_forward_files(seer, settings, context, target, scope)
        privileges = before_draining(
            seer, deployment, retiring, terminate=False, progress=drain.stderr_progress
        )
        sources = deployment.sources(privileges, quiet)
        with Watch(sources, retiring) as watch:
            outcome = drain.watch_until_drained(watch, timeout=timeout, quiet_period=quiet)
            if not outcome.drained:
                raise drain.timeout_error(outcome, timeout, quiet)
            yield drain.Vigil(watch)


def _confirm(control: ControlConnection, family: RoleFamily, after: FamilyState) -> None:
    """The catalog must hold the new state before the state file says so."""
    drift = FamilyCatalog.read(control, family).login_drift(after)
    if drift:
        raise RolekitError(
            "the upgrade committed, but the catalog does not hold the new state ("
            + "; ".join(d.problem for d in drift)
            + "); the state file is unchanged. Does migrations/env.py use rolekit's "
            "run_migrations or RolekitRun?"
        )


def rotate(
    settings: Settings,
    family: RoleFamily,
    context: str,
    step: Step,
    *,
    apply: bool = False,
    upgrade_x: Sequence[str] = (),
    length: int = DEFAULT_PASSWORD_LENGTH,
) -> Transition:
    """Move *family* to the next phase in *context*; with *apply*, upgrade now."""
    with rotate_lock(settings, family, apply) as control:
        return rotate_locked(
            settings, family, context, step, control, upgrade_x=upgrade_x, length=length
        )


def rotate_locked(
    settings: Settings,
    family: RoleFamily,
    context: str,
    step: Step,
    control: ControlConnection | None,
    *,
    upgrade_x: Sequence[str] = (),
    length: int = DEFAULT_PASSWORD_LENGTH,
    watching: drain.Vigil | None = None,
) -> Transition:
    """:func:`rotate` for a caller that holds the locks (``rotate auto`` holds
    them for a whole run); *control* ``None`` is a dry run.  A finish given
    *watching* (``rotate --all``, which drains every family at once) takes it
    as its vigil instead of draining first."""
    state = RotationState.load(settings.state_file)
    current = state.get(family.group, context)
    after = _next(family, context, current, step)
    assert current is not None
    applied = control is not None and _require_forward(control, state, family, context, after)
    resumed = False
    if step == Step.BEGIN:
        resumed = _begin_secrets(settings, family, context, after, control, length)
    else:
        resumed = applied
    change = Change(family, {context: after})
    if control is None:
        update(settings.state_file, family.group, change.states, family.members)
    elif watching is not None:
        _upgrade(settings, context, upgrade_x, [change], watching)
    else:
        retiring = [m for m in current.login if m not in after.login and not applied]
        target = state.copy()
        target.set(family.group, context, after)
        with vigil(
            settings, retiring, upgrade_x, context, target, frozenset(family.members)
        ) as own:
            _upgrade(settings, context, upgrade_x, [change], own)
    return Transition(family.group, context, current, after, control is not None, resumed)


def begin_all(
    settings: Settings,
    families: Sequence[RoleFamily],
    context: str,
    control: ControlConnection,
    *,
    length: int = DEFAULT_PASSWORD_LENGTH,
) -> list[Transition]:
    """``begin`` for every one of *families* (steady), applied by one upgrade.

    Each family is checked as :func:`rotate_locked` checks one (its phase, its
    position against the database's) and gets its own fresh password, or
    keeps the one a begin killed after its commit already set, before the
    upgrade; the state file records all of them once the catalog holds them.
    """
    state = RotationState.load(settings.state_file)
    moves = []
    for family in families:
        current = state.get(family.group, context)
        after = _next(family, context, current, Step.BEGIN)
        assert current is not None
        _require_forward(control, state, family, context, after)
        resumed = _begin_secrets(settings, family, context, after, control, length)
        moves.append((family, current, after, resumed))
    changes = [Change(family, {context: after}) for family, _, after, _ in moves]
    _upgrade(settings, context, (), changes)
    return [
        Transition(family.group, context, current, after, True, resumed)
        for family, current, after, resumed in moves
    ]


def finish_x(
    drain_timeout: float | None = None, quiet_period: float | None = None, terminate: bool = False
) -> list[str]:
    """The ``-x`` arguments of a finish's upgrade: the drain's timeout and quiet
    period when given (else the settings'), and ``terminate``."""
    extra = [f"drain_timeout={drain_timeout}"] if drain_timeout is not None else []
    extra += [f"drain_quiet_period={quiet_period}"] if quiet_period is not None else []
    return extra + (["terminate=true"] if terminate else [])

"""``rolekit rotate FAMILY auto``: a whole rotation, safe to run from cron as often as you like.

One run holds the family's locks from start to end (a second run exits 4 at
once) and decides from the state file *and the catalog*, so a run killed at
any point is completed by the next one:

* steady, and the catalog agrees: rotate only when the password apps use is
  older than the maximum age (else read, report, exit 0);
* steady, but the catalog is already in the overlap: a ``begin`` committed
  and was killed before writing the state file; ``begin`` again keeps the
  password the server has (no lost password, no second begin);
* overlap: publish the credentials again (publishing is idempotent), wait
  for the old member to drain (``--move-timeout``), then finish.  A finish
  killed after its commit is recorded by the next finish.

Publishing runs a command with the credentials on its **stdin** only, never
in its arguments or environment, in a process group of its own that is ended
whole (:mod:`rolekit.rotation.publish`).  A failing publish stops the run in
the overlap, where both members may log in: no outage; its message shows the
end of the command's stderr with every rendering of a secret masked.  A
``--publish-format`` the run could not render is refused before ``begin``.  With ``--git-push``
each phase reaches the repository before anything is published
(:mod:`rolekit.rotation.gitstate`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from rolekit.errors import RolekitError, mask_url_passwords
from rolekit.model import variables
from rolekit.model.family import RoleFamily
from rolekit.pg.control import ControlConnection
from rolekit.pg.family_catalog import FamilyCatalog
from rolekit.project.config import Settings
from rolekit.project.state import FamilyState, Phase, RotationState
from rolekit.rotation import creds_formats, gitstate, handout, inspection, publish
from rolekit.rotation.workflow import Step, Transition, finish_x, rotate_lock, rotate_locked

#: environment variables that may carry rolekit's own secrets (URLs with a
#: password, libpq's password, the age identity or SOPS age key that decrypts
#: every password): never passed on to the publish command
_PRIVATE_ENV: Final = (
    *(
        v.name
        for v in (
            variables.DATABASE_URL,
            variables.REPLICAS,
            variables.POOLERS,
            variables.AGE_IDENTITY,
            variables.AGE_IDENTITY_FILE,
        )
    ),
    "PGPASSWORD",
    "SOPS_AGE_KEY",
    "SOPS_AGE_KEY_FILE",
    "SOPS_AGE_KEY_CMD",
)

Emit = Callable[[dict[str, Any]], None]


class PublishError(RolekitError):
    """The publish command failed; the family stays in the overlap (both may log in)."""

    exit_code = 1


@dataclass(frozen=True)
class Plan:
    """How ``auto`` rotates: the policy, where to publish, how long to wait."""

    max_age_s: float
    publish: str | None = None
    publish_format: str = "json"
    publish_timeout: float = 300.0
    move_timeout: float | None = None
    quiet_period: float | None = None
    git_commit: bool = False
    #: push after every commit, before anything is published (``--git-push``)
    git_push: bool = False


def dry_run(settings: Settings, family: RoleFamily, context: str, plan: Plan, emit: Emit) -> str:
    """What a run would do now, reading only: ``not due``, ``would rotate`` or ``would resume``."""
    state = _state(settings, family, context)
    with ControlConnection.open(settings.require_url(), application_name="rolekit") as control:
        decision = _decide(control, family, state, plan, emit)
    verdict = decision if decision == NOT_DUE else f"would {decision}"
    emit({"event": "dry run", "result": verdict, "changed": "nothing"})
    return verdict


#: what a run does: nothing, a rotation, or the completion of an interrupted one
NOT_DUE, ROTATE, RESUME = "not due", "rotate", "resume"


def _decide(
    control: ControlConnection, family: RoleFamily, state: FamilyState, plan: Plan, emit: Emit
) -> str:
    """:data:`RESUME` out of the steady phase, or when a ``begin`` committed and was
    killed before writing the state file; else :data:`ROTATE` when due."""
    if state.phase != Phase.STEADY or FamilyCatalog.read(control, family).begun_past(state):
        return RESUME
    return ROTATE if _due(control, state, plan, emit) else NOT_DUE


def _state(settings: Settings, family: RoleFamily, context: str) -> FamilyState:
    state = RotationState.load(settings.state_file).get(family.group, context)
    if state is None:
        raise RolekitError(
            f"{settings.state_file.name} has no state for {family.group!r} in context {context!r}"
        )
    return state


def run(settings: Settings, family: RoleFamily, context: str, plan: Plan, emit: Emit) -> str:
    """One ``auto`` run; returns what it did: ``not due``, ``rotated`` or ``resumed``."""
    if plan.git_push:
        gitstate.require_pushable(settings, context)
    with rotate_lock(settings, family, apply=True) as control:
        assert control is not None
        state = _state(settings, family, context)
        decision = _decide(control, family, state, plan, emit)
        if decision == NOT_DUE:
            return NOT_DUE
        if plan.publish is not None:  # a format that cannot be published refuses before begin
            handout.require_renderable(settings, control, plan.publish_format, family, context)
        if state.phase == Phase.STEADY:  # due, or a begin killed before its state file
            _step(settings, family, context, Step.BEGIN, control, plan, emit)
        _publish(settings, family, context, plan, emit)
        extra = finish_x(plan.move_timeout, plan.quiet_period)
        emit({"event": "wait", "for": "the old member to drain", "timeout_s": plan.move_timeout})
        _step(settings, family, context, Step.FINISH, control, plan, emit, extra)
        return "resumed" if decision == RESUME else "rotated"


def _due(control: ControlConnection, state: FamilyState, plan: Plan, emit: Emit) -> bool:
    (active,) = state.login
    age = inspection.password_age(inspection.password_set_times(control), active)
    due = inspection.is_due(age, plan.max_age_s)
    emit(
        {
            "event": "due check",
            "member": active,
            "password_age_s": None if age is None else round(age, 1),
            "max_age_s": plan.max_age_s,
            "due": due,
        }
    )
    return due


def _step(
    settings: Settings,
    family: RoleFamily,
    context: str,
    step: Step,
    control: ControlConnection,
    plan: Plan,
    emit: Emit,
    extra: Sequence[str] = (),
) -> Transition:
    done = rotate_locked(settings, family, context, step, control, upgrade_x=extra)
    emit(
        {
            "event": "phase",
            "step": step.value,
            "phase": done.after.phase.value,
            "login": list(done.after.login),
            "resumed": done.resumed,
        }
    )
    if plan.git_commit or plan.git_push:
        push = plan.git_push
        gitstate.commit(settings, family.group, context, step.value, emit, push=push)
    return done


def _publish(settings: Settings, family: RoleFamily, context: str, plan: Plan, emit: Emit) -> None:
    if plan.publish is None:
        emit({"event": "publish", "skipped": "no --publish command"})
        return
    stays = f"{family.group} stays in the overlap (both members may log in)"
    try:
        found = handout.creds(
            settings, family.group, context, verifiers=plan.publish_format == "pgbouncer"
        )
        text = found.render(plan.publish_format)
    except RolekitError as exc:  # after begin: a failed publish, not a refusal
        raise PublishError(
            f"--publish-format {plan.publish_format}: {exc}; {stays}. Fix it and re-run"
        ) from None
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    done = publish.run(
        plan.publish, text.encode(), env=env, cwd=settings.root, timeout=plan.publish_timeout
    )
    if done.timed_out:
        raise PublishError(
            f"--publish did not finish within {plan.publish_timeout:g}s (--publish-timeout, "
            f"[rolekit] publish_timeout) and was ended; {stays}. Fix it and re-run"
        )
    if done.returncode != 0:
        said = _redacted(done, found.renderings(plan.publish_format))
        raise PublishError(
            f"--publish {done.how()}{': ' + said if said else ''}; {stays}. Fix it and re-run: "
            "the next run publishes again"
        )
    emit({"event": "publish", "ok": True, "format": plan.publish_format})


def _redacted(done: publish.Finished, renderings: frozenset[str] | None) -> str:
    """The last lines the publish command wrote to stderr (its stdout is never
    read: a command may echo what it read), with every rendering of a secret in
    them masked; none when the renderings are not known complete."""
    if renderings is None:
        return "(its stderr is not shown: it could hold a password rolekit cannot mask)"
    text = done.stderr_tail.decode(errors="replace")
    lines = creds_formats.redact(text, renderings).splitlines()
    if done.truncated:  # the first line may start inside a rendering
        lines = lines[1:]
    lines = [line[:300] for line in mask_url_passwords("\n".join(lines)).strip().splitlines()]
    return " | ".join(lines[-5:])

"""``rolekit rotate --all auto``: every due family of the project in one run.

What ``rotate FAMILY auto`` does for one family (:mod:`rolekit.rotation.auto`),
done for all of them at once, so a database with many service roles rotates
in about one quiet period:

* **one begin**: every due family's standby gets its fresh password, and one
  upgrade lets all of them log in;
* **one publish per family**, each with its own credentials;
* **one shared wait**: every family's old member drains on its own, side by
  side (each watched by its own :class:`~rolekit.deployment.drain.Vigil`);
* **finish per family as soon as it drained**: its upgrade takes the vigil's
  word, so the finishes that queue for the database's run lock do not wait
  out their quiet periods again.

A family whose publish failed, or whose apps did not move by
``--move-timeout``, stays in the overlap (both members may log in: no
outage); the others finish, and the run exits with that family's code (3 for
a drain timeout), naming it.  Every event names its family.  The run holds
every family's locks from start to end, decides from the state file and the
catalog like ``auto``, and so is completed by the next run after a kill.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence

from rolekit.deployment.drain import Vigil
from rolekit.errors import ExitCode, RolekitError
from rolekit.model.family import RoleFamily
from rolekit.pg.control import ControlConnection
from rolekit.project.config import Settings
from rolekit.project.state import Phase, RotationState, locked
from rolekit.rotation import gitstate, handout
from rolekit.rotation.auto import (
    NOT_DUE,
    RESUME,
    Emit,
    Plan,
    _decide,
    _publish,
    _state,
    dry_run,
)
from rolekit.rotation.workflow import (
    Step,
    Transition,
    begin_all,
    finish_x,
    rotate_locked,
    vigil,
)


class FleetError(RolekitError):
    """Some families stay in the overlap; the others finished.  Its exit code is
    the first failure's, a guard's (3) before any other."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _named(emit: Emit, family: str) -> Emit:
    return lambda event: emit({"family": family, **event})


@contextlib.contextmanager
def _locks(settings: Settings, families: Sequence[RoleFamily]) -> Iterator[ControlConnection]:
    """Every family's checkout lock and database lock, or refuse at once (exit 4)."""
    with contextlib.ExitStack() as stack:
        for family in families:
            stack.enter_context(locked(settings.state_file, family.group))
        control = stack.enter_context(
            ControlConnection.open(settings.require_url(), application_name="rolekit-rotate")
        )
        for family in families:
            control.try_rotate_lock(family.group)
        yield control


class _Draining(threading.Thread):
    """One family's drain, in a thread; its vigil stays open until :meth:`release`."""

    def __init__(
        self,
        settings: Settings,
        family: RoleFamily,
        retiring: list[str],
        extra: list[str],
        done: queue.Queue[str],
        context: str,
        target: RotationState,
    ) -> None:
        super().__init__(name=f"rolekit-drain {family.group}", daemon=True)
        self.settings, self.family, self.retiring, self.extra = settings, family, retiring, extra
        self.context, self.target = context, target
        self.done = done
        self.watching: Vigil | None = None
        self.error: BaseException | None = None
        self._release = threading.Event()

    def run(self) -> None:
        try:
            with vigil(
                self.settings,
                self.retiring,
                self.extra,
                self.context,
                self.target,
                frozenset(self.family.members),
            ) as watching:
                self.watching = watching
                self.done.put(self.family.group)
                self._release.wait()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.done.put(self.family.group)

    def release(self, *, join: bool = True) -> None:
        """Close the vigil (its family's upgrade is over); a drain still waiting
        ends with the process (the thread is a daemon)."""
        self._release.set()
        if join:
            self.join()


def dry_run_all(
    settings: Settings, families: Sequence[RoleFamily], context: str, plan: Plan, emit: Emit
) -> dict[str, str]:
    """What a run would do now for each family, reading only."""
    return {f.group: dry_run(settings, f, context, plan, _named(emit, f.group)) for f in families}


def run_all(
    settings: Settings, families: Sequence[RoleFamily], context: str, plan: Plan, emit: Emit
) -> dict[str, str]:
    """One ``--all`` run; returns what it did per family (``not due``, ``rotated``, ``resumed``).

    :raises FleetError: some families stay in the overlap (named); the rest finished.
    """
    if plan.git_push:
        gitstate.require_pushable(settings, context)
    with _locks(settings, families) as control:
        decisions = {}
        for family in families:
            state = _state(settings, family, context)
            decisions[family.group] = _decide(
                control, family, state, plan, _named(emit, family.group)
            )
        due = [f for f in families if decisions[f.group] != NOT_DUE]
        result = {f.group: NOT_DUE for f in families if f not in due}
        if not due:
            return result
        failures = _begin_and_publish(settings, due, context, control, plan, emit)
        finishing = [f for f in due if f.group not in failures]
        finished = _finish_all(settings, finishing, context, control, plan, emit, failures)
        _commit(settings, finished, context, Step.FINISH, plan, emit)
        for family in finished:
            result[family.group] = "resumed" if decisions[family.group] == RESUME else "rotated"
    if failures:
        raise _fleet_error(failures, finished, context)
    return result


def _begin_and_publish(
    settings: Settings,
    due: Sequence[RoleFamily],
    context: str,
    control: ControlConnection,
    plan: Plan,
    emit: Emit,
) -> dict[str, RolekitError]:
    """One begin for the steady families among *due*, then one publish per family.

    :returns: the families whose publish failed (they stay in the overlap).
    """
    if plan.publish is not None:  # a format that cannot be published refuses before begin
        for family in due:
            handout.require_renderable(settings, control, plan.publish_format, family, context)
    beginning = [f for f in due if _state(settings, f, context).phase == Phase.STEADY]
    if beginning:
        for done in begin_all(settings, beginning, context, control):
            _phase_event(emit, Step.BEGIN, done)
        _commit(settings, beginning, context, Step.BEGIN, plan, emit)
    failures: dict[str, RolekitError] = {}
    for family in due:
        try:
            _publish(settings, family, context, plan, _named(emit, family.group))
        except RolekitError as exc:
            failures[family.group] = exc
    return failures


def _finish_all(
    settings: Settings,
    families: Sequence[RoleFamily],
    context: str,
    control: ControlConnection,
    plan: Plan,
    emit: Emit,
    failures: dict[str, RolekitError],
) -> list[RoleFamily]:
    """Drain every family side by side; finish each as soon as it drained."""
    extra = finish_x(plan.move_timeout, plan.quiet_period)
    done: queue.Queue[str] = queue.Queue()
    by_name = {f.group: f for f in families}
    state = RotationState.load(settings.state_file)
    draining = {}
    for family in families:
        leaving = sorted(state.outgoing(context) & set(family.members))
        draining[family.group] = _Draining(settings, family, leaving, extra, done, context, state)
        _named(emit, family.group)(
            {"event": "wait", "for": "the old member to drain", "timeout_s": plan.move_timeout}
        )
    for thread in draining.values():
        thread.start()
    finished = []
    try:
        for _ in families:
            name = done.get()
            thread = draining[name]
            try:
                if thread.error is not None:
                    raise thread.error
                step = rotate_locked(
                    settings,
                    by_name[name],
                    context,
                    Step.FINISH,
                    control,
                    upgrade_x=extra,
                    watching=thread.watching,
                )
                _phase_event(emit, Step.FINISH, step)
                finished.append(by_name[name])
            except RolekitError as exc:
                failures[name] = exc
                _named(emit, name)(
                    {"event": "error", "error": str(exc), "exit_code": int(exc.exit_code)}
                )
            finally:
                thread.release()
    finally:
        for thread in draining.values():
            thread.release(join=False)
    return finished


def _phase_event(emit: Emit, step: Step, done: Transition) -> None:
    _named(emit, done.family)(
        {
            "event": "phase",
            "step": step.value,
            "phase": done.after.phase.value,
            "login": list(done.after.login),
            "resumed": done.resumed,
        }
    )


def _commit(
    settings: Settings,
    families: Sequence[RoleFamily],
    context: str,
    step: Step,
    plan: Plan,
    emit: Emit,
) -> None:
    """One commit for the phase, naming every family it moved."""
    if families and (plan.git_commit or plan.git_push):
        names = ", ".join(sorted(f.group for f in families))
        gitstate.commit(settings, names, context, step.value, emit, push=plan.git_push)


def _fleet_error(
    failures: dict[str, RolekitError], finished: Sequence[RoleFamily], context: str
) -> FleetError:
    codes = [int(e.exit_code) for e in failures.values()]
    code = ExitCode.GUARD if ExitCode.GUARD in codes else codes[0]
    said = "; ".join(f"{name}: {exc}" for name, exc in failures.items())
    done = ", ".join(f.group for f in finished) or "none"
    return FleetError(
        f"{', '.join(failures)} ({context}) stay in the overlap (both members may log in; the "
        f"next run carries on): {said}. Finished: {done}",
        code,
    )

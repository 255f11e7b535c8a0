"""SIGKILL ``alembic upgrade`` on many different statements.

The run creates a second family in a revision and runs repeatables with
pauses between them, so kills land in the revision, in each kind of
repeatable, on changelog writes, on the commit and after it (the login
check).  Whatever the kill point, the catalog and the changelog must hold
the state before the run or the state after it, never one in between, and a
re-run must reach exactly the state of a clean run.
"""

from __future__ import annotations

import random
import time

import pytest

from rolekit.testing import Project
from tests.plugins.reliability import Counts
from tests.reliability.helpers import (
    LogTail,
    Spawned,
    alembic_cmd,
    assert_logins,
    db_state,
    fingerprint_salt,
    history,
    install_billing,
    reset_to_base,
    server_now,
    set_fingerprint_salt,
    state_diff,
    wait_idle,
)

KILLS_BY_STATEMENT = 20
KILL_DELAYS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0)  # fractions of a clean run
MIN_DISTINCT_POINTS = 15
RERUN_AFTER = {2, 9, 17}
MAX_KILLS = 45
BEFORE_ANY_STATEMENT = "(before the first statement)"  # a kill point, not a statement  # kills after which the re-run is checked right away


def _kill_once(project: Project, kind: str, value: float) -> tuple[bool, str]:
    """Start the upgrade and SIGKILL it after *value* statements or seconds,
    then wait until its backends are gone.

    Returns whether it was killed (rather than finished) and the kill point:
    the last statement the server received before the kill.
    """
    since = server_now(project.cluster)
    with LogTail(project.cluster) as tail:
        proc = Spawned(project, alembic_cmd("upgrade", "head", context="dev"))
        if kind == "statements":
            while proc.running() and tail.statement_count < value:
                tail.poll()
                time.sleep(0.002)
        else:
            deadline = time.monotonic() + value
            while proc.running() and time.monotonic() < deadline:
                time.sleep(0.005)
        proc.kill()
        result = proc.finish()
        received = tail.statements()  # before our own queries reach the log
    wait_idle(project.cluster, since=since)
    killed = result.returncode == -9
    if not received:
        return killed, BEFORE_ANY_STATEMENT
    _pid, user, text = received[-1]
    return killed, f"{user}: {text.strip()[:120]}"


@pytest.mark.slow
def test_sigkill_at_many_points_is_all_or_nothing_and_rerun_converges(
    project: Project, counts: Counts
) -> None:
    cluster = project.cluster
    install_billing(project)
    # Before: revisions 0001-0002 without a context (only the grant ran).
    project.alembic("upgrade", "0002")
    salt = fingerprint_salt(project)
    assert salt
    before = db_state(cluster, exact_verifiers=False)

    def rebuild_before() -> None:
        reset_to_base(project)
        project.alembic("upgrade", "0002")
        set_fingerprint_salt(project, salt)
        assert db_state(cluster, exact_verifiers=False) == before

    # After: one clean run, which also tells how many statements a run sends.
    with LogTail(cluster) as tail:
        started = time.monotonic()
        project.upgrade("dev")
        duration = time.monotonic() - started
        tail.poll()
        total = tail.statement_count
    after = db_state(cluster, exact_verifiers=False)
    assert after != before and after["alembic_version"] == [("0003",)]
    assert_logins(project)
    rebuild_before()

    rng = random.Random(20240601)
    plan: list[tuple[str, float]] = [
        ("statements", 1 + round(i * (total + 2) / (KILLS_BY_STATEMENT - 1)))
        for i in range(KILLS_BY_STATEMENT)
    ]
    plan += [("seconds", duration * f * rng.uniform(0.9, 1.1)) for f in KILL_DELAYS]
    rng.shuffle(plan)

    points: dict[str, set[str]] = {}
    problems: list[str] = []
    kills = 0
    n = 0
    while n < len(plan):
        kind, value = plan[n]
        killed, point = _kill_once(project, kind, value)
        kills += killed
        state = db_state(cluster, exact_verifiers=False)
        outcome = "before" if state == before else "after" if state == after else "IN BETWEEN"
        if killed:
            points.setdefault(point, set()).add(outcome)
        elif outcome != "after":
            problems.append(f"run {n} finished on its own but left {outcome}")
        if outcome == "IN BETWEEN":
            diff_before, diff_after = state_diff(before, state), state_diff(after, state)
            problems.append(
                f"kill {n} ({kind}={value:.2f}) at {point!r} left a state in between:\n"
                f"vs before:\n{diff_before}\nvs after:\n{diff_after}"
            )
        if n in RERUN_AFTER or outcome != "before":
            if n in RERUN_AFTER:
                project.upgrade("dev")
                rerun = db_state(cluster, exact_verifiers=False)
                if rerun != after:
                    problems.append(
                        f"re-run after kill {n} at {point!r} differs from a clean run:\n"
                        f"{state_diff(after, rerun)}"
                    )
            rebuild_before()
        n += 1
        statements = len(points.keys() - {BEFORE_ANY_STATEMENT})
        if n == len(plan) and statements < MIN_DISTINCT_POINTS + 3 and n < MAX_KILLS:
            # Under load kills land late and bunch up: aim at more statements.
            plan.append(("statements", rng.randint(1, total + 2)))

    # Finally from a killed run: re-run, then once more (a no-op).
    kills += _kill_once(project, "statements", total // 2)[0]
    project.upgrade("dev")
    assert db_state(cluster, exact_verifiers=False) == after
    runs = history(cluster)
    project.upgrade("dev")
    assert history(cluster) == runs
    assert_logins(project)

    counts.faults_injected += kills
    statements = len(points.keys() - {BEFORE_ANY_STATEMENT})
    counts.kill_points += statements
    report = "\n".join(f"  {sorted(o)} {p}" for p, o in sorted(points.items()))
    print(
        f"\ncrash safety: {kills} kills on {statements} distinct statements "
        f"({total} statements per run):\n{report}"
    )
    assert not problems, "\n\n".join(problems)
    assert statements >= MIN_DISTINCT_POINTS, report
    assert any("before" in o for o in points.values())

"""Monitoring a rotation policy: ``check --max-age`` and the age in ``status``.

The age is that of the password apps use (the preferred member), counted
from when rolekit last set it (the changelog history).  A monitor runs
``rolekit check --max-age 90d`` and alerts on exit 1.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from rolekit.errors import RolekitError
from rolekit.model.durations import describe, parse_duration
from rolekit.testing import Project


def _check(project: Project, max_age: str) -> tuple[int, list[str]]:
    proc = project.rolekit("check", "--context", "dev", "--json", "--max-age", max_age, check=False)
    return proc.returncode, json.loads(proc.stdout)["problems"] if proc.stdout else []


def test_check_exits_1_once_the_password_apps_use_is_older(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    assert _check(project, "1h") == (0, [])
    time.sleep(2.1)
    code, problems = _check(project, "2s")
    assert code == 1
    assert len(problems) == 1
    assert re.fullmatch(
        r"my_app: the password of 'my_app_tom' \(the member apps use\) is \d+ seconds old, "
        r"older than the maximum age 2s: rotate it \(rolekit rotate my_app begin \.\.\.\)",
        problems[0],
    ), problems
    # status shows the age, and with --max-age when it is due
    proc = project.rolekit("status", "--context", "dev", "--max-age", "90d")
    assert re.search(
        r"password of my_app_tom: set \d+ seconds ago; due in 89 days \(maximum age 90d\)",
        proc.stdout,
    ), proc.stdout
    family = json.loads(
        project.rolekit("status", "--context", "dev", "--json", "--max-age", "90d").stdout
    )["families"][0]
    assert 2 <= family["password_age_s"] < 600
    assert 90 * 86400 - 600 < family["due_in_s"] <= 90 * 86400 - 2


def test_a_rotation_restarts_the_clock_of_the_member_apps_use(project: Project) -> None:
    project.upgrade("dev")
    time.sleep(2.1)
    assert _check(project, "2s")[0] == 1
    project.rolekit("rotate", "my_app", "begin", "--context", "dev", "--apply")
    # jerry, with the password begin just set, is the member apps use now
    assert _check(project, "2s") == (0, [])


def test_an_unknown_age_is_a_problem_with_max_age(project: Project) -> None:
    project.upgrade("dev")
    # as if the password had been set by hand: no record of rolekit setting it
    project.query("ALTER TABLE rolekit_changelog_history DISABLE TRIGGER USER")
    project.query("DELETE FROM rolekit_changelog_history")
    status = project.rolekit("status", "--context", "dev")
    assert status.returncode == 0  # without a policy, nothing to alert on
    assert "password of my_app_tom: age unknown" in status.stdout
    code, problems = _check(project, "90d")
    assert code == 1
    assert "has no recorded age: rolekit never set it" in problems[0]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * 86400), ("12h", 43200), ("30m", 1800), ("45s", 45), ("2w", 14 * 86400),
     ("0", 0), ("1.5d", 1.5 * 86400), (" 7D ", 7 * 86400)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "90", "d", "90x", "-1d", "1e3d", "90 d", "99999999w"])
def test_bad_durations_are_named(text: str) -> None:
    with pytest.raises(RolekitError, match=r"--max-age '.*'"):
        parse_duration(text)


def test_describe() -> None:
    assert describe(95 * 86400 + 3600) == "95 days"
    assert describe(3600) == "1 hour"
    assert describe(59) == "59 seconds"
    assert describe(-2 * 86400) == "2 days"


def test_a_bad_max_age_changes_nothing_and_exits_2(project: Project) -> None:
    project.upgrade("dev")
    proc = project.rolekit("check", "--context", "dev", "--max-age", "90x", check=False)
    assert proc.returncode == 2
    assert "--max-age '90x': expected a number and a unit" in proc.stderr


def test_the_policy_can_live_in_alembic_ini(project: Project) -> None:
    project.upgrade("dev")
    ini = project.root / "alembic.ini"
    ini.write_text(ini.read_text().replace("[rolekit]\n", "[rolekit]\nmax_age = 90d\n", 1))
    status = project.rolekit("status", "--context", "dev")
    assert "due in 89 days (maximum age 90d)" in status.stdout
    time.sleep(1.1)
    assert _check(project, "1s")[0] == 1  # --max-age overrides it
    ini.write_text(ini.read_text().replace("max_age = 90d", "max_age = ninety days"))
    proc = project.rolekit("check", "--context", "dev", check=False)
    assert proc.returncode == 2
    assert "[rolekit] max_age 'ninety days': expected a number and a unit" in proc.stderr

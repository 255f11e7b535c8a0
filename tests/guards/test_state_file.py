"""The state file is validated strictly and changes only when the database commits
(findings 6, 8 and 10)."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.guards.helpers import can_login, check, password, rotate, sleeping_session
from tests.plugins.postgres import REPO
from tests.reliability.helpers import Spawned, rolekit_cmd, wait_for_output

FINISH = ("rotate", "my_app", "finish", "--context", "dev", "--apply", "--drain-timeout")


_DEV = '"dev": {"login": ["my_app_tom"]}'
#: (what replaces the dev state in the example's state file, what the error must say)
INVALID = [
    (
        '"dev": {"login": [], "decommissioned": "false"}',
        'families.my_app.dev.decommissioned: expected true or false (JSON booleans), not "false"',
    ),
    (
        '"dev": {"login": ["my_app_tom", "my_app_jerry"]}',
        "both members may log in but 'incoming' is not set",
    ),
    ('"dev": {"login": "my_app_tom"}', "families.my_app.dev.login: expected a list"),
    ('"dev": {"login": ["my_app_tom"], "retire": "delete"}', "families.my_app.dev.retire"),
    (f'{_DEV}, "dev": {{"login": ["my_app_jerry"]}}', "key 'dev' appears twice"),
    (f'{_DEV}, "Dev": {{"login": ["my_app_jerry"]}}', "contexts are case-insensitive"),
]


def test_an_invalid_state_file_is_refused_and_changes_nothing(any_project: Project) -> None:
    """Findings 6 and 10: wrong types, dead ends, duplicate keys and contexts."""
    project = any_project
    project.upgrade("dev")
    before = role_snapshot(project.cluster)
    valid = project.state_path.read_text()
    assert _DEV in valid
    for replacement, needle in INVALID:
        project.state_path.write_text(valid.replace(_DEV, replacement))
        for proc in (
            project.upgrade("dev", check=False),
            project.rolekit("check", "--context", "dev", check=False),
            project.rolekit("rotate", "my_app", "finish", "--context", "dev", check=False),
        ):
            assert proc.returncode != 0, replacement
            assert needle in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr
        assert role_snapshot(project.cluster) == before


def test_sigterm_during_the_drain_leaves_file_and_catalog_agreeing(any_project: Project) -> None:
    """Finding 8: a cancelled CI job left the file finished and the database not."""
    project = any_project
    project.upgrade("dev")
    rotate(project, "begin")
    state = project.state()
    with sleeping_session(project, "my_app_tom"):
        run = Spawned(project, rolekit_cmd(*FINISH, "60"))
        wait_for_output(run, "drain: waiting")
        run.proc.send_signal(signal.SIGTERM)
        result = run.finish(timeout=60)
        assert result.returncode == 143, result.stderr
        assert "interrupted by SIGTERM" in result.stderr and "Traceback" not in result.stderr
        assert project.state() == state
        assert can_login(project) == {"my_app_tom": True, "my_app_jerry": True}
        assert check(project).returncode == 0
    rotate(project, "finish", "--drain-timeout", "10")
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}
    assert project.state()["families"]["my_app"]["dev"] == {"login": ["my_app_jerry"], "serial": 2}


def test_begin_during_a_finish_is_refused_on_any_checkout(
    any_project: Project, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Finding 8: a begin during another operator's finish drain replaced a password
    of the member in use, and the timed-out finish restored an older state over it."""
    project = any_project
    project.upgrade("dev")
    rotate(project, "begin")
    # A second operator's checkout of the same project (same files, same database).
    other_root = tmp_path_factory.mktemp("operator2")
    for name in ("alembic.ini", "passwords.env"):
        shutil.copy(project.root / name, other_root / name)
    shutil.copytree(project.root / "migrations", other_root / "migrations")
    other = Project(
        other_root,
        project.cluster,
        project.user,
        project.password,
        pythonpath=[REPO],
        env=project.extra_env,
    )
    passwords = {r: password(project, r) for r in ("my_app_tom", "my_app_jerry")}
    with sleeping_session(project, "my_app_tom"):
        run = Spawned(project, rolekit_cmd(*FINISH, "4"))
        wait_for_output(run, "drain: waiting")
        for operator in (project, other):
            proc = operator.rolekit(
                "rotate", "my_app", "begin", "--context", "dev", "--apply", check=False
            )
            assert proc.returncode == 4, proc.stderr
            assert "another 'rolekit rotate" in proc.stderr
        result = run.finish(timeout=60)
        assert result.returncode == 3
    assert {r: password(project, r) for r in passwords} == passwords
    assert json.loads(project.state_path.read_text())["families"]["my_app"]["dev"]["login"] == [
        "my_app_tom",
        "my_app_jerry",
    ]
    for role, secret in passwords.items():
        project.cluster.connect(role, secret).close()

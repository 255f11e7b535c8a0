"""Issue 19: the files never move the database backwards.

After a full rotation (tom -> jerry), a deploy with files from before it --
a restored ``passwords.env``, a rolled-back ``rotation.json``, or both --
must be refused at once (no drain wait), change nothing, and cost the
application on the active member no login.  Every test runs as a superuser
and as the least-privileged migrator.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.guards.helpers import QueryLoop, can_login, check, password, rotate

#: a quiet period no test waits out: a refusal that came after a drain would time out
LONG_QUIET = {"drain_quiet_period": "120", "drain_timeout": "240"}


def verifiers(project: Project) -> dict[str, str]:
    rows = project.query(
        "SELECT rolname, rolpassword FROM pg_authid WHERE rolname LIKE 'my_app_%%'"
    )
    return dict(rows)  # type: ignore[arg-type]


def snapshot(project: Project) -> tuple[Any, ...]:
    """The catalog, passwords included, and what the database recorded."""
    (recorded,) = project.query("SELECT to_regclass('rolekit_rotation') IS NOT NULL")[0]
    positions = (
        project.query("SELECT family, context, serial, digest FROM rolekit_rotation")
        if recorded
        else []
    )
    return role_snapshot(project.cluster), verifiers(project), sorted(positions)


def full_rotation(project: Project, tmp: Path) -> dict[str, Path]:
    """Upgrade, keep copies of the files as they were, rotate tom -> jerry."""
    project.upgrade("dev")
    saved = {}
    for name, path in (("secrets", project.root / "passwords.env"), ("state", project.state_path)):
        saved[name] = tmp / name
        shutil.copy(path, saved[name])
    rotate(project, "begin")
    rotate(project, "finish")
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}
    return saved


def restore(project: Project, saved: dict[str, Path], *names: str) -> None:
    targets = {"secrets": project.root / "passwords.env", "state": project.state_path}
    for name in names:
        shutil.copy(saved[name], targets[name])


def refused_at_once(project: Project) -> str:
    before = snapshot(project)
    proc = project.upgrade("dev", x=LONG_QUIET, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "drain:" not in proc.stderr  # refused before any drain wait
    assert "Traceback" not in proc.stderr
    assert snapshot(project) == before
    return proc.stderr


@pytest.mark.parametrize("stale", [("secrets",), ("state",), ("secrets", "state")])
def test_stale_files_are_refused_and_the_app_keeps_logging_in(
    any_project: Project, tmp_path: Path, stale: tuple[str, ...]
) -> None:
    project = any_project
    saved = full_rotation(project, tmp_path)
    current = password(project, "my_app_jerry")
    restore(project, saved, *stale)
    # Findings 1 and 3 with an app logging in as jerry all along; finding 2
    # also with nothing connected (the lull in which it locked everyone out).
    with QueryLoop(project, "my_app_jerry", reconnect=True, interval=0.05, secret=current) as app:
        message = refused_at_once(project)
    assert app.latencies and not app.errors, app.errors[:3]
    if "state" in stale:
        assert "rotation.json is stale for family 'my_app' (context dev)" in message
        assert "position 0" in message and "position 2" in message
        assert f"by '{project.user}'" in message
        assert '"serial": 2' in message  # how to get back on track
    else:
        assert "holds a password that 'my_app_jerry' (replaced" in message
        assert "is never set again" in message
    if stale == ("state",):
        assert refused_at_once(project)  # nothing connected: still refused
    assert check(project).returncode == 1
    # The current files back: everything converges, nothing to do.
    for name in stale:
        source = project.root / "passwords.env" if name == "secrets" else project.state_path
        assert source.exists()
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


def test_check_and_plan_name_a_stale_state_file(any_project: Project, tmp_path: Path) -> None:
    project = any_project
    saved = full_rotation(project, tmp_path)
    restore(project, saved, "state")
    proc = check(project)
    assert proc.returncode == 1 and "rotation.json is stale for family 'my_app'" in proc.stdout
    status = project.rolekit("status", "--context", "dev", check=False)
    assert status.returncode == 1 and "is stale" in status.stdout
    plan = project.rolekit("plan", "--context", "dev", check=False)
    assert "is stale" in plan.stdout + plan.stderr


def test_a_diverged_branch_is_refused(any_project: Project) -> None:
    """Two branches advanced from one position: the second to deploy is refused."""
    project = any_project
    project.upgrade("dev")
    branch = project.state()
    rotate(project, "begin")  # branch A: position 1, overlap
    project.write_state(branch)  # branch B from position 0: decommission-like hand edit
    project.edit_state("my_app", "dev", {"login": ["my_app_jerry"]})
    message = refused_at_once(project)
    assert "has diverged from the database for family 'my_app'" in message
    assert "position 1" in message


def test_a_hand_edit_that_advances_the_position_is_applied(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    project.edit_state("my_app", "dev", {"login": ["my_app_tom"], "retire": "expire"})
    project.upgrade("dev")
    assert project.query("SELECT serial FROM rolekit_rotation WHERE context = 'dev'") == [(1,)]
    data = project.state()
    data["families"]["my_app"]["dev"] = {"login": ["my_app_tom"], "serial": 1}  # not advanced
    project.write_state(data)
    assert 'without adding one to "serial"' in refused_at_once(project)


def test_another_projects_file_is_refused_unless_taken_over(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    rotate(project, "begin")
    rotate(project, "finish")
    data = project.state()
    data["lineage"] = "another-project"
    data["families"]["my_app"]["dev"]["serial"] = 7
    project.write_state(data)
    assert "belongs to another project" in refused_at_once(project)
    project.upgrade("dev", x={"take_over": "my_app"})
    rows = project.query("SELECT serial, lineage FROM rolekit_rotation WHERE context = 'dev'")
    assert rows == [(7, "another-project")]


def test_the_password_of_a_member_in_use_is_never_replaced(any_project: Project) -> None:
    """Issue 23, finding 5, and issue 19: one rule for every way a file can
    disagree with the server about the password applications use."""
    project = any_project
    project.upgrade("dev")
    current = password(project, "my_app_tom")
    project.rolekit("gen-password", "my_app_tom", "--context", "dev", "--write")
    # a pooled app (its connection stays) and one that logs in for every query
    with (
        QueryLoop(project, "my_app_tom", interval=0.05, secret=current),
        QueryLoop(project, "my_app_tom", reconnect=True, interval=0.05, secret=current) as app,
    ):
        message = refused_at_once(project)
        assert "refusing to replace the password of 'my_app_tom'" in message
        assert "session(s) on primary" in message and "-x replace_password=my_app_tom" in message
    assert app.latencies and not app.errors, app.errors[:3]
    # Nobody connected: the new password is the user's intent, and is set.
    project.upgrade("dev")
    assert project.cluster.connect("my_app_tom", password(project, "my_app_tom")).close() is None


def test_the_places_that_tell_whether_it_is_in_use_are_reached_before_the_transaction(
    any_project: Project,
) -> None:
    """Replicas and poolers are connected before the migration transaction, which
    may hold a revision's locks: a slow or unreachable one stalls nobody."""
    project = any_project
    project.upgrade("dev")
    project.rolekit("gen-password", "my_app_tom", "--context", "dev", "--write")
    project.extra_env["ROLEKIT_REPLICAS"] = "postgresql://127.0.0.1:1/postgres"
    offset = project.cluster.log_size()
    proc = project.upgrade("dev", check=False)
    assert proc.returncode == 5 and "cannot reach replica 127.0.0.1:1/postgres" in proc.stderr
    # refused before the migration transaction read alembic_version
    assert "alembic_version" not in project.cluster.log_since(offset)


def test_the_emergency_override_names_the_member(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    current = password(project, "my_app_tom")
    project.rolekit("gen-password", "my_app_tom", "--context", "dev", "--write")
    with QueryLoop(project, "my_app_tom", interval=0.05, secret=current):
        proc = project.upgrade("dev", x={"replace_password": "my_app_tom"})
    assert "although it is in use" in proc.stderr
    assert "fail at their next login" in proc.stderr


def test_cycles_back_and_forth_keep_working(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    for active in ("my_app_jerry", "my_app_tom", "my_app_jerry"):
        rotate(project, "begin")
        rotate(project, "finish")
        assert can_login(project)[active]
        project.upgrade("dev")  # a deploy of the committed files: a no-op
    state = json.loads(project.state_path.read_text())["families"]["my_app"]["dev"]
    assert state == {"login": ["my_app_jerry"], "serial": 6}
    assert check(project).returncode == 0


def test_a_finish_with_a_stale_secrets_file_is_refused_before_it_drains(
    any_project: Project, tmp_path: Path
) -> None:
    """``rotate finish`` drains before it takes the run lock: the files are checked
    before that drain, not after it."""
    project = any_project
    project.upgrade("dev")
    shutil.copy(project.root / "passwords.env", tmp_path / "passwords.env")
    rotate(project, "begin")
    shutil.copy(tmp_path / "passwords.env", project.root / "passwords.env")
    before = snapshot(project)
    proc = project.rolekit(
        "rotate", "my_app", "finish", "--context", "dev", "--apply", "--quiet-period", "120",
        "--drain-timeout", "240", check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "holds a password that 'my_app_jerry' (replaced" in proc.stderr
    assert "drain:" not in proc.stderr
    assert snapshot(project) == before

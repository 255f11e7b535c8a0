"""The upgrade converges to the catalog, not to its changelog (finding 4), and a
mistyped or missing context or family is refused (finding 10)."""

from __future__ import annotations

import shutil

import psycopg2
import pytest

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.guards.helpers import can_login, check, creds, is_migrator, login_as, password
from tests.plugins.postgres import CONTEXTS, MEMBERS


def test_upgrade_repairs_what_check_reports_whatever_the_changelog_says(
    any_project: Project,
) -> None:
    """Finding 4: the active member disabled by hand, then its password changed by hand:
    check reports each, and the next upgrade repairs it (its changelog had nothing new)."""
    project = any_project
    project.upgrade("dev")
    for drift, expected in (
        (
            "ALTER ROLE my_app_tom NOLOGIN",
            "drift: 'my_app_tom' is NOLOGIN but the rotation state lets it log in",
        ),
        (
            "ALTER ROLE my_app_tom PASSWORD 'changed-by-hand-0123456789'",
            "password drift: 'my_app_tom' rejects the password in passwords.env",
        ),
    ):
        project.query(drift)
        reported = check(project)
        assert reported.returncode == 1 and expected in reported.stdout, reported.stdout
        upgraded = project.upgrade("dev")
        assert "drift" in upgraded.stderr
        assert can_login(project) == {"my_app_tom": True, "my_app_jerry": False}
        login_as(project, creds(project)["user"]).close()
        assert check(project).stdout.strip() == "no drift"


def _history(project: Project) -> list[tuple[str, str]]:
    rows = project.query("SELECT id, exec_type FROM rolekit_changelog_history ORDER BY seq")
    return [(r[0], r[1]) for r in rows]


def test_a_repeatable_can_be_forced_to_run_again(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    seen = len(_history(project))
    project.alembic("upgrade", "head", context="dev", x={"rerun": "grant_permissions_to_my_app"})
    assert _history(project)[seen:] == [("grant_permissions_to_my_app", "reran")]
    project.rolekit("clear-checksums", "allow_login_for_my_app")
    assert _history(project)[-1] == ("allow_login_for_my_app", "cleared")
    proc = project.upgrade("dev")
    assert "running allow_login_for_my_app (pending: never run)" in proc.stderr
    unknown = project.rolekit("clear-checksums", "no_such_id", check=False)
    assert unknown.returncode == 2 and "no changelog entry for 'no_such_id'" in unknown.stderr


def _second_project(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The same family declared by a project on another database of the cluster."""
    owner = f' OWNER "{project.user}"' if is_migrator(project) else ""
    project.query(f"CREATE DATABASE other{owner}")
    root = tmp_path_factory.mktemp("other")
    shutil.copy(project.root / "alembic.ini", root / "alembic.ini")
    shutil.copytree(project.root / "migrations", root / "migrations")
    other = Project(
        root, project.cluster, project.user, project.password, "other", env=project.extra_env
    )
    other.fresh_passwords(MEMBERS, CONTEXTS)
    return other


def test_a_second_database_cannot_take_over_the_family(
    any_project: Project, tmp_path_factory: pytest.TempPathFactory
) -> None:
    project = any_project
    project.upgrade("dev")
    other = _second_project(project, tmp_path_factory)
    before = role_snapshot(project.cluster)
    proc = other.upgrade("dev", check=False)
    assert proc.returncode != 0
    assert "managed from another database of this cluster" in proc.stderr
    assert "my_app_tom by 'postgres'" in proc.stderr and "-x take_over=my_app" in proc.stderr
    assert role_snapshot(project.cluster) == before
    login_as(project, "my_app_tom").close()  # the first project's password still works
    assert other.rolekit("check", "--context", "dev", check=False).returncode == 1
    # Told to, the second database takes the family; the first is refused from then on.
    other.upgrade("dev", x={"take_over": "my_app"})
    other.cluster.connect("my_app_tom", password(other, "my_app_tom")).close()
    refused = project.upgrade("dev", check=False)
    assert refused.returncode != 0 and "by 'other'" in refused.stderr


def test_mistyped_context_is_refused_naming_the_known_ones(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    before = role_snapshot(project.cluster)
    proc = project.upgrade("prdo", check=False)
    assert proc.returncode != 0
    assert "unknown context 'prdo'" in proc.stderr
    assert "known contexts: dev, local, prod" in proc.stderr
    assert role_snapshot(project.cluster) == before
    for args in (("status",), ("check",), ("plan",), ("rotate", "my_app", "begin")):
        cli = project.rolekit(*args, "--context", "prdo", check=False)
        assert cli.returncode == 2 and "unknown context 'prdo'" in cli.stderr, cli.stderr


def test_a_context_without_rotation_state_is_refused(any_project: Project) -> None:
    """Finding 10: a family missing from rotation.json skipped its login step silently."""
    project = any_project
    project.upgrade("dev")
    data = project.state()
    del data["families"]["my_app"]["local"]
    project.write_state(data)
    before = role_snapshot(project.cluster)
    proc = project.upgrade("local", check=False)
    assert proc.returncode != 0
    assert "has no state for family 'my_app' in context 'local'" in proc.stderr
    assert role_snapshot(project.cluster) == before
    checked = project.rolekit("check", "--context", "local", check=False)
    assert checked.returncode == 1
    assert "no entry for context 'local'" in checked.stdout


def test_members_only_log_in_with_the_password_on_file(any_project: Project) -> None:
    """Enabling a member re-sends its known password: a second database's overwrite
    (finding 4) cannot leave a LOGIN member with a password nobody has."""
    project = any_project
    project.upgrade("dev")
    project.query("ALTER ROLE my_app_jerry PASSWORD 'someone-elses-password-42'")
    project.edit_state(
        "my_app", "dev", {"login": ["my_app_tom", "my_app_jerry"], "incoming": "my_app_jerry"}
    )
    project.upgrade("dev")
    login_as(project, "my_app_jerry").close()
    with pytest.raises(psycopg2.OperationalError):
        project.cluster.connect("my_app_jerry", "someone-elses-password-42")

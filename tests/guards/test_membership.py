"""A member is verified to act as the group before it may log in (finding 3).

Taking the membership (15) or its SET option (16+) away from the standby
made ``begin`` and ``finish`` move the applications to a member whose
sessions ran as itself: ``permission denied for schema my_schema``.
"""

from __future__ import annotations

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.guards.helpers import can_login, check, login_as, revoke_membership, rotate


def _acts_as(project: Project, role: str) -> tuple[str, str]:
    conn = login_as(project, role)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, has_schema_privilege('my_schema', 'USAGE')::text")
            row = cur.fetchone()
            assert row is not None
            return row[0], row[1]
    finally:
        conn.close()


def test_rotation_repairs_a_revoked_membership_before_enabling(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    revoke_membership(project, "my_app_jerry")
    proc = check(project)
    assert proc.returncode == 1 and "'my_app_jerry'" in proc.stdout, proc.stdout
    begun = rotate(project, "begin")
    assert "its sessions would not act as 'my_app'" in begun.stderr  # repaired, and said so
    assert _acts_as(project, "my_app_jerry") == ("my_app", "true")
    rotate(project, "finish", "--drain-timeout", "10")
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}
    assert _acts_as(project, "my_app_jerry") == ("my_app", "true")
    assert check(project).returncode == 0


def test_a_member_set_to_act_as_another_role_is_refused(any_project: Project) -> None:
    """A login role chosen by someone (per database) is not repaired: refused, nothing changed."""
    project = any_project
    project.upgrade("dev")
    project.query("CREATE ROLE other NOLOGIN")
    project.query("GRANT other TO my_app_jerry")
    project.query("ALTER ROLE my_app_jerry IN DATABASE postgres SET role = other")
    before, state = role_snapshot(project.cluster), project.state()
    proc = rotate(project, "begin", check=False)
    assert proc.returncode == 3, proc.stderr
    assert "refusing to let 'my_app_jerry' log in" in proc.stderr
    assert "in database 'postgres'" in proc.stderr
    assert role_snapshot(project.cluster) == before
    assert project.state() == state
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": False}

"""Concurrent deploys and rotations.

test_repeatables has four concurrent upgrades with no pending revision and
test_rotation two concurrent ``rotate begin`` without ``--apply``; here the
upgrades also have a revision creating a family to apply, and the rotations
apply themselves, so the race covers the database too.
"""

from __future__ import annotations

import collections

from rolekit.testing import Project
from tests.reliability.helpers import (
    BILLING_IDS,
    TRACEBACK,
    Spawned,
    alembic_cmd,
    assert_logins,
    history,
    install_billing,
    rolekit_cmd,
)


def test_four_concurrent_upgrades_with_a_pending_family_run_each_repeatable_once(
    project: Project,
) -> None:
    install_billing(project, pause_sql="pg_sleep(0.02)")
    offset = project.cluster.log_size()
    procs = [Spawned(project, alembic_cmd("upgrade", "head", context="dev")) for _ in range(4)]
    results = [p.finish(timeout=180) for p in procs]
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr[-2000:] for r in results]
    assert project.query("SELECT version_num FROM alembic_version") == [("0003",)]
    runs = history(project.cluster)
    per_id = collections.Counter(i for i, _ in runs)
    expected = BILLING_IDS | {
        "set_passwords_dev",
        "grant_permissions_to_my_app",
        "allow_login_for_my_app",
    }
    assert set(per_id) == expected
    assert all(n == 1 for n in per_id.values()), per_id
    assert {e for _, e in runs} == {"executed"}
    # Exactly one process created the family; the others found it done.
    log = project.cluster.log_since(offset)
    assert log.count('statement: CREATE ROLE "billing" NOLOGIN') == 1
    assert_logins(project)
    members = project.query(
        "SELECT u.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
        " JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = 'billing' ORDER BY 1"
    )
    assert members == [("billing_a",), ("billing_b",)]


def test_concurrent_applied_rotation_steps_exactly_one_wins(project: Project) -> None:
    project.upgrade("dev")
    for phase, login in (("begin", ["my_app_jerry", "my_app_tom"]), ("finish", ["my_app_jerry"])):
        extra = ["--drain-timeout", "10"] if phase == "finish" else []
        cmd = rolekit_cmd("rotate", "my_app", phase, "--context", "dev", "--apply", *extra)
        results = [p.finish(timeout=180) for p in [Spawned(project, cmd) for _ in range(2)]]
        assert sorted(r.returncode for r in results) == [0, 4], [r.stderr for r in results]
        loser = next(r for r in results if r.returncode == 4)
        assert TRACEBACK not in loser.stderr and "rolekit: error: cannot" in loser.stderr
        rows = project.query(
            "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname LIKE 'my_app%%' ORDER BY 1"
        )
        assert [r[0] for r in rows] == login
        assert sorted(project.state()["families"]["my_app"]["dev"]["login"]) == login
        assert_logins(project)

"""No lock is held while waiting (finding 5), and waits are bounded and reported.

A revision that altered a table the applications query, in the same upgrade
as a ``finish``, stalled every client on both members for the whole drain:
the drain waited inside the migration transaction, holding the ALTER's lock,
and the old member's sessions, waiting on that lock, could never drain.
"""

from __future__ import annotations

import time

from rolekit.testing import Project
from tests.guards.helpers import QueryLoop, can_login, creds, rotate
from tests.reliability.helpers import Spawned, rolekit_cmd, wait_for_output

ORDERS = '''"""orders, queried by the applications"""
from alembic import op
revision = "0003"
down_revision = "0002"
def upgrade():
    op.execute("CREATE TABLE my_schema.orders (id int)")
    op.execute("GRANT SELECT ON my_schema.orders TO my_app")
def downgrade():
    op.execute("DROP TABLE my_schema.orders")
'''

ALTER = '''"""a column, added in the same deploy as the finish"""
from alembic import op
revision = "0004"
down_revision = "0003"
def upgrade():
    op.execute("ALTER TABLE my_schema.orders ADD COLUMN note text")
def downgrade():
    op.execute("ALTER TABLE my_schema.orders DROP COLUMN note")
'''


def _blocked_clients(project: Project) -> list[tuple[int, str]]:
    """Client backends waiting on a lock someone holds."""
    rows = project.query(
        "SELECT pid, usename::text FROM pg_stat_activity"
        " WHERE cardinality(pg_blocking_pids(pid)) > 0 AND usename LIKE 'my_app%%'"
    )
    return [(r[0], r[1]) for r in rows]


def test_drain_waits_without_holding_the_migrations_locks(any_project: Project) -> None:
    project = any_project
    versions = project.root / "migrations" / "versions"
    (versions / "0003_orders.py").write_text(ORDERS)
    project.upgrade("dev")
    old = creds(project)
    rotate(project, "begin")
    new = creds(project)
    (versions / "0004_note.py").write_text(ALTER)
    query = "SELECT count(*) FROM my_schema.orders"
    with (
        QueryLoop(project, old["user"], query, secret=old["password"]) as old_app,
        QueryLoop(project, new["user"], query, secret=new["password"]) as new_app,
    ):
        finish = Spawned(
            project,
            rolekit_cmd(
                "rotate", "my_app", "finish", "--context", "dev", "--apply", "--drain-timeout", "60"
            ),
        )
        wait_for_output(finish, "drain: waiting")
        started = time.monotonic()
        blocked: list[tuple[int, str]] = []
        while time.monotonic() - started < 3:  # the drain waits; nobody may be stuck
            blocked += _blocked_clients(project)
            time.sleep(0.1)
        waited = (started, time.monotonic())
        old_app.stop.set()  # the old application moves over: the drain can finish
        old_app.thread.join(10)
        result = finish.finish(timeout=120)
    assert result.returncode == 0, result.stderr
    assert blocked == [], f"clients waited on the migration's locks: {blocked}"
    # Both members kept querying while the drain waited (one query every 0.2 s).
    assert old_app.queries_between(*waited) >= 5
    assert new_app.queries_between(*waited) >= 5
    assert old_app.errors == [] and new_app.errors == []
    slowest = max(s for _, s in old_app.latencies + new_app.latencies)
    print(f"slowest client query while the drain waited: {slowest * 1000:.0f} ms")
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}
    assert project.query(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders'"
        " AND column_name = 'note'"
    ) == [(1,)]


def test_waiting_for_another_run_is_bounded_and_reported(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    holder = project.cluster.connect(application_name="other-deploy")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (0x726F6C656B6974,))
        started = time.monotonic()
        proc = project.alembic("upgrade", "head", context="dev", x={"lock_wait": "2"}, check=False)
        assert time.monotonic() - started < 60
        assert proc.returncode != 0
        assert "lock: waiting for another rolekit run (backend" in proc.stderr
        assert "other-deploy" in proc.stderr
        assert "did not finish within 2s; nothing was changed" in proc.stderr
    finally:
        holder.close()
    project.upgrade("dev")

"""Shared steps of the guard regression tests (issue: guards that cannot be fooled).

Every test here runs with both migration users of ``any_project``: a
superuser, and the least-privileged migrator the README documents
(CREATEROLE, owns the database, nothing else).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from subprocess import CompletedProcess
from typing import Any

import psycopg2

from rolekit.testing import Project

KILLPOINT = [sys.executable, "-m", "tests.guards.killpoint"]


def rotate(project: Project, phase: str, *extra: str, check: bool = True) -> CompletedProcess[str]:
    """``rolekit rotate my_app PHASE --context dev --apply [extra]``."""
    return project.rolekit(
        "rotate", "my_app", phase, "--context", "dev", "--apply", *extra, check=check
    )


def creds(project: Project) -> dict[str, str]:
    out = project.rolekit("creds", "my_app", "--context", "dev", "--json").stdout
    return json.loads(out)  # type: ignore[no-any-return]


def check(project: Project) -> CompletedProcess[str]:
    return project.rolekit("check", "--context", "dev", check=False)


def can_login(project: Project) -> dict[str, bool]:
    rows = project.query(
        "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN ('my_app_tom', 'my_app_jerry')"
    )
    return dict(rows)  # type: ignore[arg-type]


def sessions_of(project: Project, user: str) -> list[int]:
    rows = project.query(
        "SELECT pid FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()", (user,)
    )
    return [r[0] for r in rows]


def password(project: Project, role: str) -> str:
    return project.secrets.get(role, "dev").reveal()


def login_as(project: Project, role: str, **kw: Any) -> Any:
    return project.cluster.connect(role, password(project, role), **kw)


def is_migrator(project: Project) -> bool:
    return project.user != project.cluster.superuser


def revoke_member_grants(project: Project) -> None:
    """Take away the membership in the members that create_role_family gives a
    non-superuser migrator: it then sees other sessions as PostgreSQL shows
    them to an unprivileged user (user and pid, no address) and may not end
    them, like a family made by an older rolekit or by hand."""
    if not is_migrator(project):
        return
    for member in ("my_app_tom", "my_app_jerry"):
        # On 16+ the creator's ADMIN OPTION is its own grant (and stays).
        grantors = project.query(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
            " JOIN pg_roles u ON u.oid = m.member JOIN pg_roles g ON g.oid = m.grantor"
            " WHERE r.rolname = %s AND u.rolname = %s AND NOT m.admin_option",
            (member, project.user),
        )
        for (grantor,) in grantors:
            project.query(f'REVOKE "{member}" FROM "{project.user}" GRANTED BY "{grantor}"')


def revoke_membership(project: Project, member: str) -> None:
    """The finding's hand edit: on 15 the membership, on 16+ its SET option."""
    grantors = project.query(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
        " JOIN pg_roles u ON u.oid = m.member JOIN pg_roles g ON g.oid = m.grantor"
        " WHERE r.rolname = 'my_app' AND u.rolname = %s",
        (member,),
    )
    for (grantor,) in grantors:
        what = "SET OPTION FOR my_app" if project.cluster.major >= 16 else "my_app"
        project.query(f'REVOKE {what} FROM "{member}" GRANTED BY "{grantor}"')


class QueryLoop:
    """A client that runs one query every *interval* seconds on its own connection,
    recording each query's latency; it reconnects after an error, and with
    *reconnect* for every query."""

    def __init__(
        self,
        project: Project,
        role: str,
        query: str = "SELECT 1",
        *,
        interval: float = 0.2,
        reconnect: bool = False,
        secret: str | None = None,
    ) -> None:
        self.project, self.role, self.query = project, role, query
        self.secret = secret or password(project, role)
        self.interval, self.reconnect = interval, reconnect
        self.latencies: list[tuple[float, float]] = []  # (started, seconds)
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self) -> Any:
        return self.project.cluster.connect(self.role, self.secret, application_name="loop")

    def _run(self) -> None:
        conn: Any = None
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = self._connect()
                with conn.cursor() as cur:
                    cur.execute(self.query)
                self.latencies.append((started, time.monotonic() - started))
            except psycopg2.Error as exc:
                # a session that was ended reconnects at once, as a pool would
                self.errors.append(str(exc).strip().splitlines()[0])
                if conn is not None:
                    conn.close()
                    conn = None
            if self.reconnect and conn is not None:
                conn.close()
                conn = None
            self.stop.wait(self.interval)
        if conn is not None:
            conn.close()

    def __enter__(self) -> QueryLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def queries_between(self, start: float, end: float) -> int:
        return sum(1 for t, _ in self.latencies if start <= t <= end)


@contextlib.contextmanager
def sleeping_session(project: Project, role: str, seconds: int = 900) -> Iterator[int]:
    """A session of *role* busy in ``pg_sleep`` (yields its backend pid)."""
    conn = login_as(project, role, application_name="sleeper")
    pid = conn.get_backend_pid()
    thread = threading.Thread(target=_sleep, args=(conn, seconds), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = project.query("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
            if rows and rows[0][0] == "active":
                break
            time.sleep(0.05)
        yield pid
    finally:
        with contextlib.suppress(Exception):
            project.query("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(10)
        with contextlib.suppress(Exception):
            conn.close()


def _sleep(conn: Any, seconds: int) -> None:
    with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
        cur.execute("SELECT pg_sleep(%s)", (seconds,))

"""Clients and settings of the whole-deployment drain tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rolekit.testing import AppClient as Client
from rolekit.testing import Cluster, Project
from tests.guards.helpers import is_migrator, password
from tests.plugins.deployment import Replicated


def replica_urls(*replicas: Cluster) -> str:
    """``ROLEKIT_REPLICAS``: host, port and database only, so the primary URL's
    user and password apply (what the README documents)."""
    return ", ".join(f"postgresql://{r.host}:{r.port}/postgres" for r in replicas)


def may_identify_standbys(project: Project, replicated: Replicated) -> None:
    """Grant the migrator pg_read_all_stats, which rolekit needs to tell which
    streaming standby each configured replica is (a superuser has it)."""
    if is_migrator(project):
        project.query(f'GRANT pg_read_all_stats TO "{project.user}"')
        replicated.sync()


def connect_as(project: Project, role: str, server: Cluster | None = None) -> Callable[[], Any]:
    """Log in as *role* with its current password, to *server* (the primary by default)."""
    target = server or project.cluster

    def connect() -> Any:
        return target.connect(role, password(project, role), application_name="app")

    return connect


def wait_for_no_sessions(server: Cluster, role: str, timeout: float = 10) -> None:
    """Wait until *server* runs no backend of *role*.

    A backend exits a moment after its client closes, so a login check that
    just ended (the upgrade verifies each member's login) can still be listed.
    """
    deadline = time.monotonic() + timeout
    query = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
    while server.query_one(query, (role,)) != 0:
        assert time.monotonic() < deadline, f"{role} still has sessions on {server}"
        time.sleep(0.05)


__all__ = ["Client", "connect_as", "may_identify_standbys", "replica_urls", "wait_for_no_sessions"]

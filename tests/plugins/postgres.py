"""Real PostgreSQL clusters and throwaway copies of the example project.

``ROLEKIT_PG_VERSIONS`` (default ``15``) lists the majors the full suite runs
on; tests marked ``compat`` also run on ``ROLEKIT_COMPAT_VERSIONS``.  A test
that uses a cluster gets the ``server`` marker, so ``make test-fast`` (``-m
"not server"``) runs everything else in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rolekit.testing import Cluster, Project

#: the repository: its alembic.ini and migrations/ are the example project
REPO = Path(__file__).resolve().parents[2]
#: the example project's family
MEMBERS = ("my_app_tom", "my_app_jerry")
#: contexts whose passwords every test project gets
CONTEXTS = ("dev", "local")
#: the quiet period of test projects: long enough to see every poll of every
#: host more than ten times, short enough that a finish does not wait 90 s.
#: Tests of the quiet period itself pass their own.
TEST_QUIET_PERIOD = "0.3"

FULL_VERSIONS = [int(v) for v in os.environ.get("ROLEKIT_PG_VERSIONS", "15").split()]
COMPAT_VERSIONS = [int(v) for v in os.environ.get("ROLEKIT_COMPAT_VERSIONS", "").split()]
_SERVER_FIXTURES = {"pg_major", "cluster", "shared_major", "shared_cluster"}
_reported: set[str] = set()


def example_project(root: Path, cluster: Cluster, **kw: Any) -> Project:
    """The example project copied to *root*, its members with fresh passwords."""
    kw.setdefault("in_process", True)
    kw.setdefault("env", {"ROLEKIT_DRAIN_QUIET_PERIOD": TEST_QUIET_PERIOD})
    return Project.copy(
        REPO, root, cluster, members=MEMBERS, contexts=CONTEXTS, pythonpath=[REPO], **kw
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pg_major" in metafunc.fixturenames:
        majors = list(FULL_VERSIONS)
        if metafunc.definition.get_closest_marker("compat"):
            majors += [m for m in COMPAT_VERSIONS if m not in majors]
        # A test of a feature that only exists from some major runs only there.
        since = metafunc.definition.get_closest_marker("since")
        if since:
            majors = [m for m in majors if m >= since.args[0]]
        metafunc.parametrize("pg_major", majors, ids=[f"pg{m}" for m in majors], indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture
def pg_major(request: pytest.FixtureRequest) -> int:
    """The PostgreSQL major version under test (parametrized above)."""
    return int(request.param)


@pytest.fixture
def cluster(pg_major: int, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A fresh cluster per test: roles are cluster-wide, so tests cannot share one."""
    with Cluster(pg_major) as c:
        conn = c.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT version()")
            # user_properties travel from xdist workers to the controller.
            request.node.user_properties.append(("server_version", str(cur.fetchone()[0])))  # type: ignore[index]
        conn.close()
        yield c


@pytest.fixture
def project(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The example project copied to a temp dir, run as the superuser."""
    return example_project(tmp_path_factory.mktemp("project"), cluster)


@pytest.fixture
def managed_project(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The example project run as the least-privileged migrator (RDS-like)."""
    user, password = cluster.create_migrator()
    return example_project(
        tmp_path_factory.mktemp("project"), cluster, user=user, password=password
    )


@pytest.fixture(params=["superuser", "createrole"])
def any_project(
    request: pytest.FixtureRequest, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Project:
    """Both kinds of migration user: a superuser, and the least-privileged migrator."""
    root = tmp_path_factory.mktemp("project")
    if request.param == "superuser":
        return example_project(root, cluster)
    user, password = cluster.create_migrator()
    return example_project(root, cluster, user=user, password=password)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", ()):
                if key == "server_version":
                    _reported.add(value)
    if _reported:
        terminalreporter.write_sep("-", "PostgreSQL servers tested")
        for line in sorted(_reported):
            terminalreporter.write_line(line)

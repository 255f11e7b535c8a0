"""Fixtures of the whole-deployment drain tests: streaming standbys and PgBouncer.

``replicated`` is a primary with a direct standby and a cascaded one (a
standby of the standby), all real servers; ``deployed_project`` is the
example project on that primary, run as a superuser and as the
least-privileged migrator (guards are tested with both).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from rolekit.testing import Cluster, Project
from tests.plugins.postgres import example_project


class Replicated(NamedTuple):
    primary: Cluster
    direct: Cluster
    cascade: Cluster

    def sync(self, timeout: float = 30) -> None:
        """Wait until both standbys replayed what the primary wrote so far."""
        target = self.primary.query_one("SELECT pg_current_wal_insert_lsn()::text")
        deadline = time.monotonic() + timeout
        for standby in (self.direct, self.cascade):
            while not standby.query_one("SELECT pg_last_wal_replay_lsn() >= %s", (target,)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{standby} did not replay {target} in {timeout:.0f}s")
                time.sleep(0.05)


@pytest.fixture
def replicated(pg_major: int) -> Iterator[Replicated]:
    """A primary, a standby streaming from it, and one streaming from that standby."""
    # a base backup taken from a standby needs full-page writes on the primary
    with Cluster(pg_major, settings={"full_page_writes": "on"}) as primary:
        direct = primary.standby()
        try:
            cascade = direct.standby()
            try:
                yield Replicated(primary, direct, cascade)
            finally:
                cascade.cleanup()
        finally:
            direct.cleanup()


@pytest.fixture(params=["superuser", "createrole"])
def deployed_project(
    request: pytest.FixtureRequest,
    replicated: Replicated,
    tmp_path_factory: pytest.TempPathFactory,
) -> Project:
    """The example project on the replicated primary, as either migration user."""
    root = tmp_path_factory.mktemp("project")
    if request.param == "superuser":
        return example_project(root, replicated.primary)
    user, password = replicated.primary.create_migrator()
    replicated.sync()  # the migrator logs in to the standbys too
    return example_project(root, replicated.primary, user=user, password=password)

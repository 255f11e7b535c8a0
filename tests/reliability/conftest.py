"""Counters for the reliability suite, and a cluster shared by a module.

Every test adds what it did to :data:`COUNTS` (through the ``counts``
fixture); the totals are printed at the end of the session as::

    RELIABILITY: faults_injected=N inputs_tried=M leak_hits=0 ...

and written to ``counts.json`` in pytest's base temporary directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from rolekit.sandbox import Cluster

FULL_VERSIONS = [int(v) for v in os.environ.get("ROLEKIT_PG_VERSIONS", "15").split()]


@dataclass
class Counts:
    """What the suite did; the first three are the headline numbers."""

    #: SIGKILLs, server restarts, terminated or cancelled backends
    faults_injected: int = 0
    #: hostile inputs fed to rolekit (names, contexts, secrets files...)
    inputs_tried: int = 0
    #: plaintexts or verifiers found where they must not be (must stay 0)
    leak_hits: int = 0
    #: distinct statements an ``alembic upgrade`` was killed on
    kill_points: int = 0
    #: rule applications of the stateful property test
    stateful_steps: int = 0
    #: distinct plaintext passwords and verifiers searched for
    secrets_searched: int = 0
    #: places (log, outputs, tables, files) searched, summed over audits
    places_searched: int = 0


COUNTS = Counts()
_session: dict[str, Path | bool] = {}


@pytest.fixture(scope="session")
def counts(tmp_path_factory: pytest.TempPathFactory) -> Counts:
    """The session's accumulator."""
    _session["dir"] = tmp_path_factory.getbasetemp()
    return COUNTS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "shared_major" in metafunc.fixturenames:
        metafunc.parametrize(
            "shared_major",
            FULL_VERSIONS,
            ids=[f"pg{m}" for m in FULL_VERSIONS],
            indirect=True,
            scope="module",
        )


@pytest.fixture(scope="module")
def shared_major(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(scope="module")
def shared_cluster(shared_major: int) -> Iterator[Cluster]:
    """One cluster for a whole module, for tests that restore what they change."""
    with Cluster(shared_major) as cluster:
        yield cluster


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "dir" not in _session:
        return
    data = asdict(COUNTS)
    line = "RELIABILITY: " + " ".join(f"{k}={v}" for k, v in data.items())
    terminalreporter.write_sep("-", "reliability counts")
    terminalreporter.write_line(line)
    target = Path(_session["dir"]) / "counts.json"  # type: ignore[arg-type]
    try:
        target.write_text(json.dumps(data, indent=2) + "\n")
        terminalreporter.write_line(f"written to {target}")
    except OSError as exc:  # the numbers are printed above anyway
        terminalreporter.write_line(f"could not write {target}: {exc}")

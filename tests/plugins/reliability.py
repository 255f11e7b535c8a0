"""Counters for the reliability suite, and a cluster shared by a module.

Each test adds what it did to its ``counts`` fixture; the numbers travel in
the test's report (so they also come back from pytest-xdist workers) and are
summed at the end of the session into one line::

    RELIABILITY: faults_injected=N inputs_tried=M leak_hits=0 ...

which is also written to ``counts.json`` in pytest's base temporary directory.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pytest

from rolekit.testing import Cluster
from tests.plugins.postgres import FULL_VERSIONS

_PROPERTY = "reliability_counts"


@dataclass
class Counts:
    """What one test did; the first three are the headline numbers."""

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
    #: distinct plaintexts and verifiers the leak searches looked for
    secrets_searched: int = 0
    #: (secret, place) pairs searched: the server log, each output, tables, files
    leak_checks: int = 0


@pytest.fixture
def counts(request: pytest.FixtureRequest) -> Iterator[Counts]:
    """This test's counters, reported with its result (also when it fails)."""
    mine = Counts()
    yield mine
    request.node.user_properties.append((_PROPERTY, asdict(mine)))


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


def _totals(terminalreporter: pytest.TerminalReporter) -> dict[str, int] | None:
    totals = dict.fromkeys((f.name for f in fields(Counts)), 0)
    found = False
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "teardown":
                continue  # every report of a test carries the properties
            for key, value in getattr(report, "user_properties", ()):
                if key == _PROPERTY:
                    found = True
                    for name, n in value.items():
                        totals[name] = totals.get(name, 0) + int(n)
    return totals if found else None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print and save the totals (on the xdist controller, which loads plugins)."""
    totals = _totals(terminalreporter)
    if totals is None:
        return
    terminalreporter.write_sep("-", "reliability counts")
    terminalreporter.write_line("RELIABILITY: " + " ".join(f"{k}={v}" for k, v in totals.items()))
    factory = getattr(terminalreporter.config, "_tmp_path_factory", None)
    try:
        base = factory.getbasetemp() if factory is not None else Path(tempfile.gettempdir())
        target = Path(base) / "counts.json"
        target.write_text(json.dumps(totals, indent=2) + "\n")
        terminalreporter.write_line(f"written to {target}")
    except OSError as exc:  # the numbers are printed above anyway
        terminalreporter.write_line(f"could not write counts.json: {exc}")

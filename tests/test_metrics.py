"""``rolekit status --format openmetrics``: one document for the fleet, for Prometheus.

The document is read back with the reference parser (``prometheus_client``),
and its values are compared with the catalog, read here as the superuser.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as classic_families

from rolekit.cli import main
from rolekit.project.state import Phase
from rolekit.rotation import metrics
from rolekit.rotation.inspection import PROBLEM_KINDS, FamilyReport, MemberReport, PlaceReport
from rolekit.testing import Project
from tests.reliability.helpers import install_billing

#: (metric sample name, labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(text: str) -> tuple[Samples, dict[str, str]]:
    """The samples of an OpenMetrics document, and each family's unit (all are gauges).

    The classic Prometheus text parser (node_exporter's textfile collector
    uses one) must read the same samples.
    """
    samples: Samples = {}
    units: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family
        units[family.name] = family.unit
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    classic = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in classic_families(text)
        for s in family.samples
    }
    assert classic == samples
    return samples, units


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _select(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    wanted = set(labels.items())
    return {ls: v for (n, ls), v in samples.items() if n == name and wanted <= ls}


def _status(project: Project, *args: str) -> tuple[int, str]:
    proc = project.rolekit(
        "status", "--context", "dev", "--format", "openmetrics", *args, check=False
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, proc.stdout


@contextlib.contextmanager
def _session(project: Project, role: str) -> Iterator[Any]:
    conn = project.cluster.connect(role, project.secret_of(role, "dev"))
    try:
        yield conn
    finally:
        conn.close()


def _settled_sessions(project: Project, expected: dict[str, int]) -> dict[str, int]:
    """The sessions of each role in pg_stat_activity, once they are *expected*.

    A backend lingers a moment after its client closes (rolekit's own login
    checks): wait for the catalog to settle rather than race it.
    """
    deadline = time.monotonic() + 20
    while True:
        rows = project.query(
            "SELECT usename, count(*) FROM pg_stat_activity WHERE usename = ANY(%s) GROUP BY 1",
            (list(expected),),
        )
        found = {role: dict(rows).get(role, 0) for role in expected}
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


MEMBERS = {"my_app": ["my_app_tom", "my_app_jerry"], "billing": ["billing_a", "billing_b"]}


def test_every_family_is_labelled_and_matches_the_catalog(any_project: Project) -> None:
    project = any_project
    install_billing(project, pause_sql="pg_sleep(0)")
    project.upgrade("dev")
    project.rolekit("rotate", "my_app", "begin", "--context", "dev", "--apply")
    expected = {m: 0 for ms in MEMBERS.values() for m in ms} | {"my_app_jerry": 1, "billing_a": 1}
    with _session(project, "my_app_jerry"), _session(project, "billing_a"):
        live = _settled_sessions(project, expected)
        code, text = _status(project, "--max-age", "90d")
    assert code == 0, text
    assert text.endswith("# EOF\n")
    samples, units = _parse(text)
    assert units["rolekit_password_age_seconds"] == "seconds"
    assert units["rolekit_password_due_timestamp_seconds"] == "seconds"
    # every sample names its family and context; every family is there
    assert {dict(ls)["context"] for _, ls in samples} == {"dev"}
    assert {dict(ls)["family"] for _, ls in samples} == set(MEMBERS)
    for secret in project.passwords.values():
        assert secret not in text

    assert _value(samples, "rolekit_phase", family="my_app", context="dev", phase="overlap")
    assert _value(samples, "rolekit_phase", family="billing", context="dev", phase="steady")
    assert sum(_select(samples, "rolekit_phase", family="billing").values()) == 1
    assert (
        _value(
            samples,
            "rolekit_family_info",
            family="my_app",
            context="dev",
            preferred="my_app_jerry",
            claimed_by="postgres",
            login_tracking="off",
        )
        == 1
    )

    can_login = dict(project.query("SELECT rolname, rolcanlogin FROM pg_roles"))
    for family, members in MEMBERS.items():
        assert _value(samples, "rolekit_check_ok", family=family, context="dev") == 1
        assert sum(_select(samples, "rolekit_problems", family=family).values()) == 0
        for member in members:
            labels = {"family": family, "context": "dev", "member": member}
            assert _value(samples, "rolekit_member_can_login", **labels) == can_login[member]
            assert _value(samples, "rolekit_member_sessions", **labels) == live[member]
    assert live == expected

    age = _value(samples, "rolekit_password_age_seconds", family="my_app", context="dev",
                 member="my_app_jerry")  # fmt: skip
    assert 0 <= age < 600
    assert _value(samples, "rolekit_password_max_age_seconds", family="my_app", context="dev") == (
        90 * 86400
    )
    set_at = _value(samples, "rolekit_member_password_set_timestamp_seconds", family="my_app",
                    context="dev", member="my_app_jerry")  # fmt: skip
    due = _value(samples, "rolekit_password_due_timestamp_seconds", family="my_app",
                 context="dev", member="my_app_jerry")  # fmt: skip
    assert due == set_at + 90 * 86400
    written = _value(samples, "rolekit_status_timestamp_seconds", family="my_app", context="dev")
    assert abs(written - set_at - age) < 5


def test_a_problem_is_counted_by_kind_and_named(any_project: Project) -> None:
    project = any_project
    install_billing(project, pause_sql="pg_sleep(0)")
    project.upgrade("dev")
    # billing_a may log in by the state file: take that away behind rolekit's back
    project.query("ALTER ROLE billing_a NOLOGIN")
    code, text = _status(project)
    assert code == 1
    samples, _ = _parse(text)
    assert _value(samples, "rolekit_check_ok", family="billing", context="dev") == 0
    assert _value(samples, "rolekit_check_ok", family="my_app", context="dev") == 1
    kinds = {
        dict(ls)["kind"]: v
        for ls, v in _select(samples, "rolekit_problems", family="billing").items()
    }
    assert set(kinds) == set(PROBLEM_KINDS) - {"other"}
    assert kinds["login_drift"] == 1
    assert kinds["lockout_risk"] == 1
    assert sum(kinds.values()) == 2
    named = _select(samples, "rolekit_problem_info", family="billing", kind="login_drift")
    (labels,) = named
    assert "'billing_a' is NOLOGIN but the rotation state lets it log in" in dict(labels)["problem"]
    # the same problems as check names, and check keeps its exit code
    check = project.rolekit("check", "--context", "dev", check=False)
    assert check.returncode == 1
    messages = {dict(ls)["problem"] for ls in _select(samples, "rolekit_problem_info")}
    assert {f"billing: {m}" for m in messages} == set(check.stdout.splitlines())


def test_output_replaces_the_file_for_a_textfile_collector(project: Project) -> None:
    project.upgrade("dev")
    target = project.root / "collector" / "rolekit.prom"
    target.parent.mkdir()
    target.write_text("old\n")
    code, printed = _status(project, "--output", str(target))
    assert (code, printed) == (0, "")
    samples, _ = _parse(target.read_text())
    assert _value(samples, "rolekit_check_ok", family="my_app", context="dev") == 1
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(target.parent) == ["rolekit.prom"]  # no temporary file left
    # a symlink is refused before the database is read (exit 2), and kept
    link = target.parent / "link.prom"
    link.symlink_to(target)
    proc = project.rolekit("status", "--context", "dev", "--format", "openmetrics",
                           "--output", str(link), check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "is a symlink, not a regular file" in proc.stderr
    assert link.is_symlink()


def test_a_replica_rolekit_cannot_reach_is_a_problem_of_every_family(project: Project) -> None:
    install_billing(project, pause_sql="pg_sleep(0)")
    project.upgrade("dev")
    ini = project.root / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "[rolekit]\n", "[rolekit]\nreplicas = postgresql://nobody@127.0.0.1:1/postgres\n", 1
        )
    )
    code, text = _status(project)
    assert code == 1
    samples, _ = _parse(text)
    for family in MEMBERS:
        assert _value(samples, "rolekit_problems", family=family, context="dev",
                      kind="deployment") == 1  # fmt: skip
        assert _value(samples, "rolekit_check_ok", family=family, context="dev") == 0


# -- without a server --------------------------------------------------------------


def _report(group: str, problem: str) -> FamilyReport:
    member = MemberReport(
        "a_1", True, can_login=True, sessions=2, password_set_at="2026-01-01T00:00:00+00:00",
        places=[PlaceReport("db:5432/x", "primary", sessions=2),
                PlaceReport('pool "1"', "pooler", pooler_clients=3)],
    )  # fmt: skip
    report = FamilyReport(group, "prod", "overlap", "a_1", [member, MemberReport("a_2", False)])
    report.flag("login_drift", problem)
    report.problems.append("added by hand")  # no kind: "other"
    report.password_age_s = 86400.5
    report.max_age = "90d"
    return report


def test_label_values_are_escaped_and_the_document_parses() -> None:
    hostile = 'quote " backslash \\ newline \n end'
    text = metrics.render(
        [_report("fam", hostile)], shared_problems=[("deployment", "replica down")], now=1e9
    )
    assert text.endswith("\n# EOF\n")
    samples, _ = _parse(text)
    problems = {
        dict(ls)["problem"]: dict(ls)["kind"] for ls in _select(samples, "rolekit_problem_info")
    }
    assert problems == {
        hostile: "login_drift",
        "added by hand": "other",
        "replica down": "deployment",
    }
    assert _value(samples, "rolekit_problems", family="fam", context="prod", kind="other") == 1
    assert _value(samples, "rolekit_place_pooler_clients", family="fam", context="prod",
                  member="a_1", place='pool "1"', kind="pooler") == 3  # fmt: skip
    assert _value(samples, "rolekit_place_sessions", family="fam", context="prod",
                  member="a_1", place="db:5432/x", kind="primary") == 2  # fmt: skip
    assert _value(samples, "rolekit_password_age_seconds", family="fam", context="prod",
                  member="a_1") == 86400.5  # fmt: skip
    assert _value(samples, "rolekit_password_due_timestamp_seconds", family="fam",
                  context="prod", member="a_1") == 1767225600 + 90 * 86400  # fmt: skip
    phases = _select(samples, "rolekit_phase", family="fam")
    assert {dict(ls)["phase"]: v for ls, v in phases.items()} == {
        p.value: float(p is Phase.OVERLAP) for p in Phase
    }


def test_unknown_problem_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown problem kind 'drift'"):
        FamilyReport("f", "dev", None, None, []).flag("drift", "x")


@pytest.mark.parametrize(
    ("args", "code"),
    [(["--json", "--format", "openmetrics"], 2), (["--json", "--format", "text"], 2)],
)
def test_json_and_another_format_contradict(args: list[str], code: int) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["status", "-c", "/nonexistent/alembic.ini", *args]) == code
    assert '"error": "--json asks for JSON, --format for' in out.getvalue()


def test_no_family_is_an_empty_document() -> None:
    assert metrics.render([]) == "# EOF\n"
    assert list(text_string_to_metric_families(metrics.render([]))) == []

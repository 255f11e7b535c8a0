"""``rolekit status --format openmetrics``: the fleet in one OpenMetrics document.

A Prometheus node_exporter textfile collector (or any OpenMetrics scraper)
reads it, so one alert rule watches every family of a context instead of
one ``rolekit check`` per family.  Everything comes from the status reports
(:mod:`rolekit.rotation.inspection`): the document says nothing ``status``
does not, and no secret (problem messages never carry one).

Every metric is a gauge: node_exporter's textfile collector reads the file
with the classic Prometheus text parser, which knows no ``info`` or
``stateset`` type (it reads ``# UNIT`` and ``# EOF`` as comments).  So the
phase is a gauge per ``phase`` label and the info metrics are gauges named
``..._info`` of value 1, as node_exporter's own ``node_uname_info`` is.

Every sample is labelled ``family`` and ``context``.  Times are Unix
seconds, so they stay right in a file read long after it was written; the
ages are there too, as of :data:`rolekit_status_timestamp_seconds`.

Problems that are not a family's own (a replica rolekit cannot reach, a
stale checkout) are counted in every family: each one stops that family's
upgrade or drain, and an alert on one family must not miss them.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rolekit.model.durations import parse_duration
from rolekit.project.state import Phase
from rolekit.rotation.inspection import PROBLEM_KINDS, FamilyReport

#: the content type a scraper expects (and the textfile collector accepts)
CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Metric:
    """One metric family: its samples stay together, as OpenMetrics requires."""

    name: str
    type: str
    help: str
    unit: str = ""
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, labels: Labels, value: float) -> None:
        self.samples.append((labels, value))

    def lines(self) -> list[str]:
        head = [f"# TYPE {self.name} {self.type}"]
        if self.unit:
            head.append(f"# UNIT {self.name} {self.unit}")
        head.append(f"# HELP {self.name} {_escape_help(self.help)}")
        return head + [f"{self.name}{_labels(ls)} {_number(v)}" for ls, v in self.samples]


def _escape_label(value: str) -> str:
    r"""A label value as OpenMetrics quotes it: ``\\``, ``\"`` and ``\n`` escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


def _timestamp(iso: str | None) -> float | None:
    """Unix seconds of an ISO time from the reports (``None`` stays ``None``)."""
    if iso is None:
        return None
    when = dt.datetime.fromisoformat(iso)
    if when.tzinfo is None:  # the history stores timestamptz; be safe anyway
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _metrics() -> dict[str, _Metric]:
    """Every metric, in the order of the document; HELP says what to alert on."""
    specs = [
        ("status_timestamp_seconds", "gauge", "seconds", "When rolekit read the catalog."),
        ("check_ok", "gauge", "", "1 when 'rolekit check' finds no problem for the family."),
        ("problems", "gauge", "", "Problems of each kind ('rolekit status' lists them)."),
        (
            "problem_info",
            "gauge",
            "",
            "1 for each problem: its kind and the message 'rolekit status' shows.",
        ),
        ("phase", "gauge", "", "1 for the rotation phase the state file records, else 0."),
        (
            "family_info",
            "gauge",
            "",
            "1, labelled with the member apps use, the managing database and login tracking.",
        ),
        ("member_can_login", "gauge", "", "1 when the member can log in now."),
        ("member_sessions", "gauge", "", "Sessions of the member on the primary."),
        (
            "member_sessions_hidden",
            "gauge",
            "",
            "Sessions on the primary whose address PostgreSQL hides from the migration user.",
        ),
        (
            "place_sessions",
            "gauge",
            "",
            "Sessions of the member on each host (primary and configured replicas).",
        ),
        ("place_pooler_clients", "gauge", "", "Clients of the member on each PgBouncer."),
        (
            "member_password_set_timestamp_seconds",
            "gauge",
            "seconds",
            "When rolekit last set the member's password (the changelog history).",
        ),
        (
            "password_age_seconds",
            "gauge",
            "seconds",
            "Age of the password apps use; absent when rolekit has no record of setting it.",
        ),
        (
            "password_max_age_seconds",
            "gauge",
            "seconds",
            "The rotation policy (--max-age or [rolekit] max_age).",
        ),
        (
            "password_due_timestamp_seconds",
            "gauge",
            "seconds",
            "When the password apps use reaches the maximum age.",
        ),
    ]
    return {name: _Metric(f"rolekit_{name}", kind, text, unit) for name, kind, unit, text in specs}


def render(
    families: Sequence[FamilyReport],
    *,
    shared_problems: Iterable[tuple[str, str]] = (),
    now: float | None = None,
) -> str:
    """One OpenMetrics document for *families*, ending in ``# EOF``.

    :param shared_problems: ``(kind, problem)`` pairs that are no family's
        own (``deployment``, ``stale_files``): counted in every family.
    :param now: the time of the reading (default: now).
    """
    shared = list(shared_problems)
    metrics = _metrics()
    at = time.time() if now is None else now
    for report in families:
        _family(metrics, report, shared, at)
    lines = [line for metric in metrics.values() if metric.samples for line in metric.lines()]
    return "\n".join([*lines, "# EOF"]) + "\n"


def _family(
    metrics: dict[str, _Metric], report: FamilyReport, shared: list[tuple[str, str]], at: float
) -> None:
    base: Labels = (("family", report.group), ("context", report.context or ""))
    problems = report.kinded_problems() + shared
    metrics["status_timestamp_seconds"].add(base, at)
    metrics["check_ok"].add(base, 0 if problems else 1)
    # every kind, zero included, so an alert on one kind has a series to watch
    # ("other" only when present: rolekit classifies every problem it makes)
    for kind in PROBLEM_KINDS:
        count = sum(1 for k, _ in problems if k == kind)
        if count or kind != "other":
            metrics["problems"].add((*base, ("kind", kind)), count)
    # an info sample per distinct problem: two equal label sets would be one series
    for kind, message in dict.fromkeys(problems):
        metrics["problem_info"].add((*base, ("kind", kind), ("problem", message)), 1)
    for phase in Phase:
        metrics["phase"].add((*base, ("phase", phase.value)), phase.value == report.phase)
    tracking = "on" if report.login_tracking == "on" else "off"
    info = (
        ("preferred", report.preferred or ""),
        ("claimed_by", report.claimed_by or ""),
        ("login_tracking", tracking),
    )
    metrics["family_info"].add((*base, *info), 1)
    _members(metrics, report, base)
    _age(metrics, report, base)


def _members(metrics: dict[str, _Metric], report: FamilyReport, base: Labels) -> None:
    for member in report.members:
        labels: Labels = (*base, ("member", member.name))
        metrics["member_can_login"].add(labels, member.can_login)
        metrics["member_sessions"].add(labels, member.sessions)
        metrics["member_sessions_hidden"].add(labels, member.sessions_hidden)
        if (set_at := _timestamp(member.password_set_at)) is not None:
            metrics["member_password_set_timestamp_seconds"].add(labels, set_at)
        for place in member.places:
            where: Labels = (*labels, ("place", place.place), ("kind", place.kind))
            if place.kind == "pooler":
                metrics["place_pooler_clients"].add(where, place.pooler_clients)
            else:
                metrics["place_sessions"].add(where, place.sessions)


def _age(metrics: dict[str, _Metric], report: FamilyReport, base: Labels) -> None:
    """The age of the password apps use and, with a policy, when it is due.

    The due time counts from when rolekit set the password, the same instant
    the age counts from, so it does not drift with the time of the reading.
    """
    if report.preferred is None:
        return
    labels: Labels = (*base, ("member", report.preferred))
    if report.password_age_s is not None:
        metrics["password_age_seconds"].add(labels, report.password_age_s)
    if report.max_age is None:
        return
    max_age_s = parse_duration(report.max_age)
    metrics["password_max_age_seconds"].add(base, max_age_s)
    member = next((m for m in report.members if m.name == report.preferred), None)
    set_at = _timestamp(member.password_set_at) if member else None
    if set_at is not None:
        metrics["password_due_timestamp_seconds"].add(labels, set_at + max_age_s)

"""``rolekit status`` in its three forms: text for a person, JSON, OpenMetrics.

The JSON form (``--json``) is the reports themselves, the OpenMetrics form
(:mod:`rolekit.rotation.metrics`) their numbers for a monitor; :func:`render`
is their text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rolekit.errors import RolekitError
from rolekit.model import durations
from rolekit.rotation import metrics
from rolekit.rotation.inspection import FamilyReport, PlaceReport

if TYPE_CHECKING:
    from rolekit.command import Status

FORMATS = ("text", "json", "openmetrics")

FORMAT_HELP = """\
--format openmetrics prints one OpenMetrics document for every family of the
context, for a Prometheus node_exporter textfile collector: rolekit_check_ok,
rolekit_problems{kind=...} and rolekit_problem_info (the messages),
rolekit_phase (a state set), sessions per member and per host or pooler, and
the password's age, maximum age and due time (Unix seconds). Every sample has
the labels family and context. With --output FILE it replaces FILE atomically
(mode 0644; the temporary file does not end in .prom, so the collector never
reads half of it):
  */5 * * * *  rolekit status --context prod --max-age 90d --format openmetrics \\
                 --output /var/lib/node_exporter/textfile/rolekit_prod.prom
--json is --format json; giving --json with another --format is an error (exit 2).
The exit code is the same in every format: 1 when there is a problem."""


def output_format(as_json: bool, fmt: str | None) -> str:
    """The one format --json and --format ask for; a contradiction is bad input."""
    if as_json and fmt not in (None, "json"):
        raise RolekitError(f"--json asks for JSON, --format for {fmt}: give one of them")
    return "json" if as_json else fmt or "text"


def to_json(result: Status) -> dict[str, Any]:
    return {
        "families": [r.to_json() for r in result.families],
        "last_runs": result.last_runs,
        "deployment_problems": result.deployment_problems,
        "stale_files": result.stale_files,
    }


def document(result: Status, fmt: str) -> str:
    """The whole output in *fmt*, ending in a newline."""
    if fmt == "openmetrics":
        shared = [("deployment", p) for p in result.deployment_problems]
        shared += [("stale_files", p) for p in result.stale_files]
        return metrics.render(result.families, shared_problems=shared)
    if fmt == "json":
        return json.dumps(to_json(result), indent=2, default=str) + "\n"
    return render(result) + "\n"


def render(result: Status) -> str:
    lines = []
    for r in result.families:
        lines.append(
            f"{r.group}  context={r.context or '-'}  phase={r.phase or '-'}  "
            f"apps use: {r.preferred or '-'}  managed from: {r.claimed_by or '-'}"
        )
        for m in r.members:
            login = "LOGIN  " if m.can_login else "NOLOGIN"
            hidden = f" ({m.sessions_hidden} hidden)" if m.sessions_hidden else ""
            lines.append(
                f"  {m.name:<24} {login} sessions={m.sessions}{hidden:<4} "
                f"password_set={m.password_set_at or '-'}  valid_until={m.valid_until or '-'}"
                f"  membership={'ok' if m.membership_ok else 'WRONG'}"
            )
            lines += [
                f"    {_place_line(place)}"
                for place in m.places
                if len(m.places) > 1 or place.last_login
            ]
        if age := _age_line(r):
            lines.append(f"  {age}")
        lines.append(f"  login tracking: {r.login_tracking}")
        lines += [f"  problem: {p}" for p in r.problems]
    lines += [f"problem: {p}" for p in [*result.stale_files, *result.deployment_problems]]
    lines.append("last repeatable runs:")
    lines += [
        f"  {x['applied_at']}  {x['id']} ({x['exec_type']}, {x['context'] or '-'})"
        for x in result.last_runs
    ] or ["  none"]
    return "\n".join(lines)


def _age_line(report: FamilyReport) -> str | None:
    """``password of my_app_tom: set 12 days ago; due in 78 days (maximum age 90d)``."""
    if report.preferred is None:
        return None
    if report.password_age_s is None:
        return f"password of {report.preferred}: age unknown (rolekit has no record of setting it)"
    line = f"password of {report.preferred}: set {durations.describe(report.password_age_s)} ago"
    if report.due_in_s is not None:
        due = durations.describe(report.due_in_s)
        when = f"due in {due}" if report.due_in_s > 0 else f"overdue by {due}"
        line += f"; {when} (maximum age {report.max_age})"
    return line


def _place_line(place: PlaceReport) -> str:
    """``on replica h:5433/db: sessions=2, last seen 2026-...`` for one host or pooler."""
    if place.kind == "pooler":
        used = f"pooler clients={place.pooler_clients}"
    else:
        hidden = f" ({place.sessions_hidden} hidden)" if place.sessions_hidden else ""
        used = f"sessions={place.sessions}{hidden}"
    seen = f", last seen {place.last_seen}" if place.last_seen else ""
    login = (
        f", last login {place.last_login} from {place.last_login_from} (tracked)"
        if place.last_login
        else ""
    )
    return f"on {place.place}: {used}{seen}{login}"

"""``rolekit status`` for a person: one block per family, then the last runs.

The JSON form (``--json``) is the reports themselves; this is only their text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rolekit.model import durations
from rolekit.rotation.inspection import FamilyReport, PlaceReport

if TYPE_CHECKING:
    from rolekit.command import Status


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

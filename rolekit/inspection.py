"""Compares what the project declares with what the catalog holds.

``rolekit status`` and ``rolekit check`` print this; both exit non-zero when
a family drifted or risks a lockout.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg2 import sql

from rolekit import catalog
from rolekit.family import RoleFamily
from rolekit.rotation.state import FamilyState
from rolekit.runtime.session import Session


@dataclass
class MemberReport:
    name: str
    exists: bool
    can_login: bool = False
    declared_login: bool | None = None
    sessions: int = 0
    valid_until: str | None = None
    #: when a SetPasswords repeatable last set its password (from the history)
    password_set_at: str | None = None
    membership_ok: bool = False


@dataclass
class FamilyReport:
    group: str
    context: str | None
    phase: str | None
    preferred: str | None
    members: list[MemberReport]
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def inspect_family(
    session: Session,
    family: RoleFamily,
    state: FamilyState | None,
    context: str | None,
    password_set_at: dict[str, str] | None = None,
) -> FamilyReport:
    roles = catalog.roles(session, family.roles)
    members_of_group = {m.member: m for m in catalog.memberships(session, [family.group])}
    live = catalog.sessions(session, family.members)
    report = FamilyReport(
        family.group,
        context,
        state.phase if state else None,
        state.preferred if state else None,
        [],
    )
    group = roles.get(family.group)
    if group is None:
        report.problems.append(f"group role {family.group!r} does not exist")
    elif group.can_login:
        report.problems.append(f"group role {family.group!r} can log in")
    for name in family.members:
        info = roles.get(name)
        member = MemberReport(name, info is not None)
        report.members.append(member)
        if info is None:
            report.problems.append(f"member role {name!r} does not exist")
            continue
        row = members_of_group.get(name)
        member.can_login = info.can_login and not info.expired
        member.sessions = sum(1 for s in live if s.user == name)
        member.valid_until = info.valid_until.isoformat() if info.valid_until else None
        member.password_set_at = (password_set_at or {}).get(name)
        member.membership_ok = bool(row and row.inherit_option and row.set_option) and (
            f"role={family.group}" in info.settings
        )
        if not member.membership_ok:
            report.problems.append(
                f"member role {name!r}: membership in {family.group!r} lacks INHERIT/SET or "
                "'SET role'; its sessions would not act as the group"
            )
        if state is not None:
            member.declared_login = name in state.login
            if member.declared_login != info.can_login:
                report.problems.append(
                    f"drift: {name!r} is {'LOGIN' if info.can_login else 'NOLOGIN'} but the rotation "
                    f"state says {'LOGIN' if member.declared_login else 'NOLOGIN'}; run alembic upgrade"
                )
    if (
        roles
        and not any(m.can_login for m in report.members)
        and not (state and state.decommissioned)
    ):
        report.problems.append(f"lockout risk: no member of {family.group!r} can log in")
    return report


def last_runs(session: Session, limit: int = 5) -> list[dict[str, Any]]:
    """The latest repeatable runs from the append-only history."""
    if not session.scalar(sql.SQL("SELECT to_regclass('rolekit_changelog_history') IS NOT NULL")):
        return []
    rows = session.fetchall(
        sql.SQL(
            "SELECT id, exec_type, context_used, applied_at, applied_by, duration_ms"
            " FROM rolekit_changelog_history ORDER BY seq DESC LIMIT %s"
        ),
        (limit,),
    )
    return [
        {
            "id": r[0],
            "exec_type": r[1],
            "context": r[2],
            "applied_at": r[3].isoformat() if isinstance(r[3], dt.datetime) else r[3],
            "applied_by": r[4],
            "duration_ms": round(r[5], 1),
        }
        for r in rows
    ]


def password_set_times(session: Session) -> dict[str, str]:
    """When rolekit last set each role's password, from the history."""
    if not session.scalar(sql.SQL("SELECT to_regclass('rolekit_changelog_history') IS NOT NULL")):
        return {}
    rows = session.fetchall(
        sql.SQL(
            "SELECT role, max(applied_at) FROM rolekit_changelog_history,"
            " unnest(passwords_set) AS role GROUP BY role"
        )
    )
    return {role: at.isoformat() for role, at in rows}

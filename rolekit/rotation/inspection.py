"""What ``rolekit status`` and ``rolekit check`` report, per family.

Everything comes from :class:`~rolekit.pg.family_catalog.FamilyCatalog`, the
same comparison the upgrade repairs from, so ``check`` reports exactly what
the next ``alembic upgrade`` would repair or refuse.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg2 import sql

from rolekit.deployment.deployment import Deployment
from rolekit.model import durations
from rolekit.model.family import RoleFamily
from rolekit.pg import catalog, claims, tracking
from rolekit.pg.catalog import Reader, SessionInfo
from rolekit.pg.family_catalog import FamilyCatalog
from rolekit.project.state import FamilyState, Phase

#: checks a member's password by logging in: None if it works, else why not
PasswordCheck = Callable[[str], "str | None"]

#: every kind of problem status reports, and what it means (the OpenMetrics
#: ``kind`` label; stable: alerts select on it)
PROBLEM_KINDS = {
    "missing_role": "the group or a member role does not exist",
    "conflict": "the existing roles cannot be this family (rolekit cannot repair it)",
    "foreign_claim": "another database manages the family",
    "state_missing": "the rotation state has no entry for the context",
    "membership": "a member's sessions would not run as the group",
    "nologin_sessions": "a NOLOGIN member still has sessions (a drain left them)",
    "login_drift": "LOGIN or VALID UNTIL differs from the rotation state",
    "password_drift": "a member cannot log in with its password from the secrets file",
    "lockout_risk": "no member can log in",
    "age_unknown": "rolekit has no record of setting the password apps use",
    "password_due": "the password apps use is older than the maximum age",
    "deployment": "a replica or pooler is unreachable or untrusted: drains cannot be proven",
    "stale_files": "the checkout is behind the database: the upgrade refuses it",
    "other": "not classified",
}


@dataclass
class PlaceReport:
    """Where a member is in use: one host (primary or replica) or one pooler."""

    place: str
    #: ``primary``, ``replica`` or ``pooler``
    kind: str
    sessions: int = 0
    #: sessions whose address PostgreSQL hides from the migration user
    sessions_hidden: int = 0
    pooler_clients: int = 0
    #: now, when it has sessions or clients (rolekit keeps no history of samples)
    last_seen: str | None = None
    #: the last login the tracking trigger recorded (primary, PostgreSQL 17+)
    last_login: str | None = None
    last_login_from: str | None = None


@dataclass
class MemberReport:
    name: str
    exists: bool
    can_login: bool = False
    declared_login: bool | None = None
    sessions: int = 0
    #: sessions whose address PostgreSQL hides from the migration user
    sessions_hidden: int = 0
    valid_until: str | None = None
    #: when a SetPasswords repeatable last set its password (from the history)
    password_set_at: str | None = None
    membership_ok: bool = False
    places: list[PlaceReport] = field(default_factory=list)


@dataclass
class FamilyReport:
    group: str
    context: str | None
    phase: str | None
    preferred: str | None
    members: list[MemberReport]
    claimed_by: str | None = None
    problems: list[str] = field(default_factory=list)
    #: the kind of each problem, in the same order (:data:`PROBLEM_KINDS`)
    problem_kinds: list[str] = field(default_factory=list)
    #: "on", or why the drain samples instead (see rolekit.pg.tracking)
    login_tracking: str = "off"
    #: seconds since rolekit last set the password of the member apps use
    #: (``preferred``); ``None`` when it has no record of setting it
    password_age_s: float | None = None
    #: the maximum age applied (``90d``), and the seconds until the password is
    #: due then (negative: overdue)
    max_age: str | None = None
    due_in_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def flag(self, kind: str, *problems: str) -> None:
        """Record *problems* of one *kind* (a key of :data:`PROBLEM_KINDS`).

        The kind travels with the message so a monitor can count and alert
        per kind without parsing English; every problem goes through here.
        """
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.problems.extend(problems)
        self.problem_kinds.extend([kind] * len(problems))

    def kinded_problems(self) -> list[tuple[str, str]]:
        """``(kind, problem)`` pairs; a problem added without :meth:`flag` is ``other``."""
        kinds = self.problem_kinds + ["other"] * (len(self.problems) - len(self.problem_kinds))
        return list(zip(kinds, self.problems, strict=False))


def _resume_hint(family: RoleFamily, state: FamilyState, found: FamilyCatalog, context: str) -> str:
    """Name the rolekit step that explains a state/catalog difference, if one does."""
    can = set(found.can_log_in())
    if found.begun_past(state):
        return (
            f"; the catalog is in the overlap of a rotation: a 'rolekit rotate {family.group} "
            f"begin --context {context} --apply' was interrupted after its commit. Re-run it to "
            "record the overlap (the password is kept), or run alembic upgrade to undo it"
        )
    if state.phase == Phase.OVERLAP and state.incoming and can == {state.incoming}:
        return (
            f"; the catalog finished the rotation: a 'rolekit rotate {family.group} finish "
            f"--context {context} --apply' was interrupted after its commit. Re-run it to record "
            "it, or run alembic upgrade to return to the overlap"
        )
    return "; run alembic upgrade to repair it"


def inspect_family(
    reader: Reader,
    family: RoleFamily,
    state: FamilyState | None,
    context: str | None,
    *,
    database: str,
    password_set_at: dict[str, str] | None = None,
    state_missing: bool = False,
    check_password: PasswordCheck | None = None,
    deployment: Deployment | None = None,
) -> FamilyReport:
    found = FamilyCatalog.read(reader, family)
    live = catalog.sessions(reader, family.members)
    report = FamilyReport(
        family.group,
        context,
        state.phase if state else None,
        state.preferred if state else None,
        [],
    )
    if family.group not in found.roles:
        report.flag("missing_role", f"group role {family.group!r} does not exist")
    report.flag("conflict", *found.conflicts())
    report.flag("foreign_claim", *_claim_problems(report, found, database))
    if state_missing and context:
        report.flag(
            "state_missing",
            f"the rotation state has no entry for context {context!r}; the upgrade refuses",
        )
    for name in family.members:
        member = _member(report, found, name, live, state, password_set_at or {})
        report.members.append(member)
    # who uses each member is read before the password checks below log in
    # as the members: a backend lingers a moment after its client closes, and
    # status would count its own check as a session
    if deployment is not None:
        report.login_tracking = _add_places(report.members, deployment)
    if state is not None and context:
        hint = _resume_hint(family, state, found, context)
        report.flag("login_drift", *[f"drift: {d.problem}{hint}" for d in found.login_drift(state)])
        if check_password is not None:
            report.flag("password_drift", *_password_problems(found, state, check_password))
    if found.roles and not found.can_log_in() and not (state and state.decommissioned):
        report.flag("lockout_risk", f"lockout risk: no member of {family.group!r} can log in")
    return report


def _add_places(members: list[MemberReport], deployment: Deployment) -> str:
    """Fill each member's use per host and pooler; return the tracking state."""
    names = [m.name for m in members]
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    places: dict[str, list[PlaceReport]] = {name: [] for name in names}
    for host in deployment.hosts:
        sessions = catalog.sessions(host.connection, names)
        kind = "primary" if host is deployment.primary else "replica"
        for name in names:
            mine = [s for s in sessions if s.user == name]
            hidden = sum(1 for s in mine if not s.details_visible)
            places[name].append(
                PlaceReport(host.name, kind, len(mine), hidden, last_seen=now if mine else None)
            )
    for pooler in deployment.poolers:
        clients = pooler.clients(names)
        for name in names:
            count = sum(1 for c in clients if c.user == name)
            places[name].append(
                PlaceReport(
                    pooler.name, "pooler", pooler_clients=count, last_seen=now if count else None
                )
            )
    schema = deployment.tracking_schema
    if schema is not None:
        for login in tracking.recent_logins(deployment.primary.connection, schema, names):
            first = places[login.user][0]  # the primary's
            if first.last_login is None:  # newest first
                at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=login.age)
                first.last_login = at.isoformat(timespec="seconds")
                first.last_login_from = login.client_addr
    for member in members:
        member.places = places[member.name]
    return "on" if schema is not None else tracking.unavailable_note(deployment.primary.connection)


def _password_problems(
    found: FamilyCatalog, state: FamilyState, check_password: PasswordCheck
) -> list[str]:
    problems = []
    for name in state.login:
        info = found.roles.get(name)
        if info is not None and info.can_log_in_now and (why := check_password(name)):
            problems.append(f"password drift: {why}; run alembic upgrade to send it again")
    return problems


def _claim_problems(report: FamilyReport, found: FamilyCatalog, database: str) -> list[str]:
    owners = {claims.claimed_by(info) for info in found.roles.values()} - {None}
    report.claimed_by = next(iter(owners)) if len(owners) == 1 else None
    foreign = sorted(o for o in owners if o is not None and o != database)
    if not foreign:
        return []
    return [
        f"managed from database {', '.join(map(repr, foreign))}, not {database!r}: the "
        "upgrade refuses it (roles are cluster-wide); -x take_over moves it here"
    ]


def _member(
    report: FamilyReport,
    found: FamilyCatalog,
    name: str,
    live: list[SessionInfo],
    state: FamilyState | None,
    password_set_at: dict[str, str],
) -> MemberReport:
    info = found.roles.get(name)
    member = MemberReport(name, info is not None)
    if info is None:
        report.flag("missing_role", f"member role {name!r} does not exist")
        return member
    mine = [s for s in live if s.user == name]
    member.can_login = info.can_log_in_now
    member.sessions = len(mine)
    member.sessions_hidden = sum(1 for s in mine if not s.details_visible)
    member.valid_until = info.valid_until.isoformat() if info.valid_until else None
    member.password_set_at = password_set_at.get(name)
    drift = found.acts_as_group(name)
    member.membership_ok = drift is None
    if drift is not None:
        report.flag("membership", drift.problem)
    if mine and not info.can_login:
        report.flag(
            "nologin_sessions",
            f"{name!r} is NOLOGIN but has {len(mine)} session(s): they keep running, and "
            "fail when they reconnect",
        )
    if state is not None:
        member.declared_login = name in state.login
    return member


def _history_exists(reader: Reader) -> bool:
    return catalog.table_exists(reader, "rolekit_changelog_history")


def last_runs(reader: Reader, limit: int = 5) -> list[dict[str, Any]]:
    """The latest repeatable runs from the append-only history."""
    if not _history_exists(reader):
        return []
    rows = reader.fetchall(
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


def password_set_times(reader: Reader) -> dict[str, str]:
    """When rolekit last set each role's password, from the history."""
    if not _history_exists(reader):
        return {}
    rows = reader.fetchall(
        sql.SQL(
            "SELECT role, max(applied_at) FROM rolekit_changelog_history,"
            " unnest(passwords_set) AS role GROUP BY role"
        )
    )
    return {role: at.isoformat() for role, at in rows}


def password_age(set_at: dict[str, str], member: str) -> float | None:
    """Seconds since rolekit last set *member*'s password (``None``: no record)."""
    when = set_at.get(member)
    if when is None:
        return None
    return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(when)).total_seconds()


def is_due(age_s: float | None, max_age_s: float) -> bool:
    """The rotation policy's one rule: a password is due once it is *max_age_s* old,
    or when rolekit has no record of setting it."""
    return age_s is None or age_s >= max_age_s


def check_password_age(
    report: FamilyReport, set_at: dict[str, str], max_age_s: float | None, max_age: str
) -> None:
    """Fill the age of the password apps use and, with *max_age_s*, flag it when due.

    The age counts from when rolekit last set that member's password (the
    changelog history).  With a maximum age, an unknown age is a problem too:
    a monitor must not stay silent about a password nobody knows the age of.
    """
    active = report.preferred
    if active is None:
        return
    age = password_age(set_at, active)
    if age is not None:
        report.password_age_s = round(age, 1)
    if max_age_s is None:
        return
    report.max_age = max_age
    if report.password_age_s is None:
        report.flag(
            "age_unknown",
            f"the password of {active!r} (the member apps use) has no recorded age: rolekit "
            f"never set it; rotate the family to start the clock (maximum age {max_age})",
        )
        return
    report.due_in_s = round(max_age_s - report.password_age_s, 1)
    if is_due(report.password_age_s, max_age_s):
        report.flag(
            "password_due",
            f"the password of {active!r} (the member apps use) is "
            f"{durations.describe(report.password_age_s)} old, older than the maximum age "
            f"{max_age}: "
            f"rotate it (rolekit rotate {report.group} begin ...)",
        )

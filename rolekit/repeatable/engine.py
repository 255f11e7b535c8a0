"""Plans and applies repeatables inside the migration transaction.

A run reads the changelog and the catalog in a fixed number of round trips,
whatever the number of repeatables, resolves every secret it needs, checks
claims and log safety, and only then executes anything.  A repeatable that
fails aborts the transaction, so the catalog and the changelog stay as they
were.
"""

from __future__ import annotations

import logging
import secrets as _random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NamedTuple

from rolekit.errors import ClaimError, PasswordInUseError, RepeatableError
from rolekit.pg import catalog, claims, ddl, password_history, positions
from rolekit.pg.logins import LoginCheck
from rolekit.pg.session import Session
from rolekit.repeatable import changelog
from rolekit.repeatable.base import Repeatable, Step, execute_step
from rolekit.repeatable.kinds import FamilyLogin, SetPasswords
from rolekit.repeatable.loader import login_members
from rolekit.repeatable.run import Observed, RunContext

log = logging.getLogger(__name__)


class Status(StrEnum):
    PENDING = "pending"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"


@dataclass
class PlanItem:
    repeatable: Repeatable
    status: Status
    reason: str
    checksum: str | None = None
    #: the steps to send (on a re-run, possibly only those that changed)
    steps: list[Step] = field(default_factory=list)
    #: digests of all the repeatable's steps, recorded in the changelog
    step_digests: list[str] = field(default_factory=list)

    @property
    def will_run(self) -> bool:
        return self.status in (Status.PENDING, Status.CHANGED)


@dataclass
class RunReport:
    items: list[PlanItem]
    #: logins to verify once committed
    to_verify: list[LoginCheck] = field(default_factory=list)

    @property
    def executed(self) -> list[PlanItem]:
        return [i for i in self.items if i.will_run]


def _observe(session: Session, run: RunContext, active: Sequence[Repeatable]) -> Observed:
    roles = {t for rep in active for t in (*rep.targets(), *rep.managed_roles())}
    password_roles = frozenset(
        role
        for rep in active
        if isinstance(rep, SetPasswords)
        for role in rep.roles_with_passwords(run)
    )
    if session.offline:
        return Observed({}, password_roles=password_roles)
    return Observed(
        catalog.roles(session, roles) if roles else {},
        password_roles,
        server_version=session.server_version,
    )


def _changed_steps(
    rep: Repeatable, run: RunContext, steps: list[Step], digests: list[str], sent: Sequence[str]
) -> list[Step]:
    """The steps whose digest the changelog has not recorded as sent."""
    sent_before = set(sent)
    changed = [s for s, d in zip(steps, digests, strict=True) if d not in sent_before]
    # A member that logged in with the password on file (the check before the
    # migration) already has it on the server, whatever its digest says: the
    # file may only have gained a fingerprint key, or another host's key.
    changed = [s for s in changed if s.secret_role not in run.password_verified]
    if changed and run.fingerprint_key is not None:
        # The secrets file may only have gained its fingerprint key since:
        # the same password then has another (keyed) digest and must not be
        # sent again, which would break what caches its verifier.
        legacy = rep.step_digests(changed, run, keyed=False)
        changed = [s for s, d in zip(changed, legacy, strict=True) if d not in sent_before]
    return changed


def _decide(
    rep: Repeatable,
    run: RunContext,
    observed: Observed,
    entry: changelog.Entry | None,
    oids: list[int],
    offline: bool,
) -> PlanItem:
    steps = rep.steps(run, observed)
    digests = rep.step_digests(steps, run)
    checksum = rep.checksum(digests)
    drift, why = ([], []) if offline else rep.converge(run, observed, steps)
    # A converging repeatable sends what the catalog lacks; offline there is
    # no catalog to compare with, so it renders everything it declares.
    converged = drift if rep.converges and not offline else steps
    # A first run, a forced one or one on re-created roles sends everything it
    # declares, and first what the catalog lacks (a password before a LOGIN).
    everything = [*drift, *(s for s in steps if s not in drift)]
    if rep.id in run.rerun:
        return PlanItem(rep, Status.CHANGED, "forced by -x rerun", checksum, everything, digests)
    if entry is None:
        return PlanItem(rep, Status.PENDING, "never run", checksum, everything, digests)
    if entry.target_oids != tuple(oids):
        reason = "its roles were dropped and re-created"
        return PlanItem(rep, Status.CHANGED, reason, checksum, everything, digests)
    if entry.checksum != checksum:
        send = converged
        if rep.rerun_changed_steps_only:  # same roles: skip what they already got
            send = _changed_steps(rep, run, steps, digests, entry.step_digests)
            send += [s for s in drift if s not in send]
        reason = "its checksum changed" + ("" if send else "; nothing to send (same passwords)")
        reason += "".join(f"; drift: {w}" for w in why)
        return PlanItem(rep, Status.CHANGED, reason, checksum, send, digests)
    if drift or why:
        reason = "drift: " + "; ".join(why)
        return PlanItem(rep, Status.CHANGED, reason, checksum, drift, digests)
    if rep.run_always:
        return PlanItem(rep, Status.CHANGED, "run_always", checksum, steps, digests)
    return PlanItem(rep, Status.UNCHANGED, "checksum unchanged", checksum, [], digests)


class Plan(NamedTuple):
    """What each repeatable would do, and what the catalog held when deciding."""

    items: list[PlanItem]
    observed: Observed


def plan(
    session: Session,
    run: RunContext,
    repeatables: list[Repeatable],
    log_state: changelog.Changelog,
    *,
    roles_must_exist: bool = True,
) -> Plan:
    """Decide what each repeatable would do, resolving every secret first."""
    ordered = sorted(enumerate(repeatables), key=lambda p: (p[1].phase, p[0]))
    items: list[PlanItem] = []
    active: list[Repeatable] = []
    for _, rep in ordered:
        reason = rep.skip_reason(run)
        if reason is not None:
            items.append(PlanItem(rep, Status.SKIPPED, reason))
        else:
            active.append(rep)
    observed = _observe(session, run, active)
    sent: set[str] = set()
    for rep in active:
        missing = [t for t in rep.targets() if t not in observed.roles]
        if missing and not session.offline:
            if roles_must_exist:
                raise RepeatableError(
                    f"repeatable {rep.id!r} ({rep.source}) targets role(s) {', '.join(missing)} "
                    "that do not exist; create them in a revision first"
                )
            items.append(PlanItem(rep, Status.PENDING, "its roles do not exist yet"))
            continue
        if rep.phase > 0:  # login changes see which passwords this run sends first
            observed = observed._replace(passwords_sent=frozenset(sent))
        oids = [observed.roles[t].oid for t in rep.targets() if t in observed.roles]
        item = _decide(rep, run, observed, log_state.entries.get(rep.id), oids, session.offline)
        if item.will_run:
            sent |= {s.secret_role for s in item.steps if s.secret_role is not None}
        items.append(item)
    order = {id(rep): n for n, (_, rep) in enumerate(ordered)}
    items.sort(key=lambda i: order[id(i.repeatable)])
    return Plan(items, observed)


def _claim(
    session: Session, run: RunContext, repeatables: list[Repeatable], observed: Observed
) -> None:
    """Refuse roles another database manages; claim the unclaimed ones for this one.

    Checked on every upgrade, no-ops included: a database that declares a
    family it does not manage must hear it before it repairs any "drift".
    """
    managed = [r for rep in repeatables for r in rep.managed_roles()]
    if not managed:
        return
    families = login_members(repeatables)
    group_of = {m: g for g, rep in families.items() for m in rep.family.roles}
    take_over = {r for r in managed if group_of.get(r, r) in run.take_over or r in run.take_over}
    existing = observed.roles
    database = session.database
    to_claim, foreign = claims.unclaimed_or_foreign(
        existing, dict.fromkeys(managed), database, frozenset(take_over)
    )
    if foreign:
        family = group_of.get(foreign[0], foreign[0])
        raise ClaimError(claims.foreign_message(existing, foreign, database, family))
    session.execute_many(
        [ddl.comment_on_role(n, claims.claim_comment(existing[n], database)) for n in to_claim],
        echo=False,
    )  # one round trip


def _logins_to_verify(
    run: RunContext, executed: list[PlanItem], repeatables: list[Repeatable]
) -> list[LoginCheck]:
    families = login_members(repeatables)
    group_of = {m: g for g, rep in families.items() for m in rep.family.members}
    checks: dict[str, LoginCheck] = {}
    for item in executed:
        for step in item.steps:
            role, secret = step.secret_role, step.secret
            if role is not None and secret is not None and run.must_log_in(role):
                checks[role] = LoginCheck(role, secret, group_of.get(role, role))
        rep = item.repeatable
        if isinstance(rep, FamilyLogin) and item.steps:
            for member in rep.state(run).login:
                if member not in checks:
                    checks[member] = LoginCheck(member, run.secret(member)[0], rep.family.group)
    return list(checks.values())


def _before_sending(
    session: Session, run: RunContext, report: RunReport, state: changelog.Changelog
) -> changelog.Changelog:
    """Refuse a verifier that would be logged; create or migrate the changelog."""
    secret = next((i for i in report.executed for s in i.steps if s.secret is not None), None)
    if secret is not None and session.offline:
        raise RepeatableError(
            f"refusing to write a password verifier into an offline script (repeatable "
            f"{secret.repeatable.id!r}); run the upgrade online, or offline without that context"
        )
    if session.offline:
        return state
    if secret is not None:
        session.log_safety().require_safe(
            allow_verifier_in_log=run.allow_verifier_in_log,
            what=f"a password verifier (repeatable {secret.repeatable.id!r})",
        )
    return changelog.ensure(session, state, salt=run.salt)


def _refuse_replacing_in_use(
    session: Session, run: RunContext, executed: Sequence[PlanItem], observed: Observed
) -> None:
    """An upgrade never replaces the password of a member that may log in and is in use.

    The secrets file then disagrees with the server about a password
    applications are using (a stale or hand-edited file, another project's
    take-over, ``gen-password --write`` of the active member): changing it
    would fail each of their next logins.  That change belongs to ``rotate
    begin``, which gives the *other* member a fresh password.
    """
    setting = {s.secret_role for i in executed for s in i.steps if s.secret_role is not None}
    replacing = sorted(
        role
        for role in setting - run.password_verified  # accepted: the server has it already
        if role in observed.roles and observed.roles[role].can_log_in_now
    )
    if not replacing or session.offline or run.uses_look is None:
        return
    uses = run.uses_look(session, replacing)
    for role in sorted(set(uses) & run.replace_password):
        log.warning(
            "replacing the password of %s although it is in use (%s), as -x replace_password "
            "asks: applications holding its current password fail at their next login",
            role,
            uses[role],
        )
    refused = sorted(set(uses) - run.replace_password)
    if refused:
        raise PasswordInUseError(password_in_use_message(refused, uses, run))


def password_in_use_message(roles: Sequence[str], uses: dict[str, str], run: RunContext) -> str:
    names = ", ".join(repr(r) for r in roles)
    filename = run.secrets_file.path.name
    seen = "; ".join(uses[r] for r in roles)
    return (
        f"refusing to replace the password of {names}: it may log in and is in use "
        f"({seen}), and {filename} holds another password for it. An upgrade "
        "never changes the password applications use; nothing was changed. If the server's "
        f"password is right, put it back in {filename}; to give the member a new password, "
        "rotate ('rolekit rotate FAMILY begin' gives the standby a fresh one, then move the "
        "applications and finish). In an emergency only, -x replace_password="
        f"{','.join(roles)} replaces it anyway and breaks every application holding the "
        "current password at its next login"
    )


def _run(session: Session, run: RunContext, item: PlanItem) -> float:
    """Execute one repeatable; return how long it took (ms)."""
    rep = item.repeatable
    log.info("running %s (%s: %s)", rep.id, item.status, item.reason)
    started = time.monotonic()
    rep.apply(session, run, item.steps)
    return (time.monotonic() - started) * 1000


def _record(session: Session, run: RunContext, ran: Sequence[tuple[PlanItem, float]]) -> None:
    """Record the repeatables that ran in the changelog, and the passwords they set
    in the password history: once all ran, the roles' OIDs read in one round trip."""
    set_now = [
        (s.secret_role, s.secret)
        for item, _ in ran
        for s in item.steps
        if s.secret_role and s.secret
    ]
    if set_now and run.primary is not None:  # a password is only ever read with a context
        password_history.record(session, set_now, run.primary)
    targets = {t for item, _ in ran for t in item.repeatable.targets()}
    oids = catalog.roles(session, targets) if targets else {}
    changelog.record(
        session,
        [
            changelog.Run(
                id=item.repeatable.id,
                checksum=item.checksum or "",
                context_expression=item.repeatable.context.text
                if item.repeatable.context
                else None,
                context_used=",".join(sorted(run.contexts)) or None,
                exec_type="executed" if item.status == Status.PENDING else "reran",
                duration_ms=duration_ms,
                target_oids=[oids[t].oid for t in item.repeatable.targets()],
                step_digests=list(item.step_digests),
                passwords_set=[s.secret_role for s in item.steps if s.secret_role],
            )
            for item, duration_ms in ran
        ],
    )


def apply(session: Session, run: RunContext, repeatables: list[Repeatable]) -> RunReport:
    """Plan and execute the repeatables that changed, recording each run."""
    state = changelog.read(session) if not session.offline else changelog.Changelog(False, b"", {})
    run = replace(run, salt=state.salt or _random.token_bytes(16))
    planned = plan(session, run, repeatables, state)
    for item in planned.items:
        if item.status == Status.SKIPPED:
            log.info("skipped %s: %s", item.repeatable.id, item.reason)
    report = RunReport(planned.items)
    if not session.offline:
        active = [i.repeatable for i in planned.items if i.status != Status.SKIPPED]
        _claim(session, run, active, planned.observed)
        _refuse_replacing_in_use(session, run, report.executed, planned.observed)
    moving = [f for f in run.positions if f.verdict.recorded] if not session.offline else []
    if not report.executed and not moving:
        return report
    migrated = _before_sending(session, run, report, state)
    if migrated.version != state.version:  # an older schema was just migrated
        report = RunReport(plan(session, run, repeatables, migrated).items)
    # Each verifier is derived while the server stores the one before.
    pending = [
        (s.secret_role, s.secret)
        for item in report.executed
        for s in item.steps
        if s.secret_role is not None and s.secret is not None
    ]
    disabled: list[str] = []
    gathering = replace(run, deferred_checks=disabled)
    with session.verifiers_ahead(pending):
        ran = [(item, _run(session, gathering, item)) for item in report.executed]
    if disabled and not session.offline:
        # The drain's last look, for every member the repeatables disabled at
        # once: one round trip per place instead of one per repeatable.
        run.decisive_check(session, list(dict.fromkeys(disabled)))
    if not session.offline:
        _record(session, run, ran)
    for family, context, serial in positions.record(session, moving, run.rotation.lineage):
        log.info("recorded position %s of %s (%s)", serial, family, context)
    if not session.offline:
        report.to_verify = _logins_to_verify(run, report.executed, repeatables)
    return report


__all__ = ["LoginCheck", "Plan", "PlanItem", "RunReport", "Status", "apply", "execute_step", "plan"]

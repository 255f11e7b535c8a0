"""Implements the operations declared in :mod:`.ops`."""

from __future__ import annotations

import logging
import time
from collections import Counter

import psycopg2
from alembic.operations import Operations
from psycopg2 import sql

from rolekit.errors import (
    ClaimError,
    FamilyConflictError,
    LiveSessionsError,
    PrivilegeError,
    TrackingError,
    VerificationError,
    first_line,
)
from rolekit.operations.ops import (
    CreateRoleFamilyOp,
    DisableLoginTrackingOp,
    DropRoleFamilyOp,
    EnableLoginTrackingOp,
)
from rolekit.pg import catalog, claims, ddl, tracking
from rolekit.pg.catalog import PG16, Reader
from rolekit.pg.family_catalog import FamilyCatalog
from rolekit.pg.session import Session, session_for
from rolekit.project.config import x_argument, x_flag

log = logging.getLogger(__name__)


def _take_over(operations: Operations) -> frozenset[str]:
    env = operations.get_context().environment_context
    return frozenset(n.strip() for n in x_argument(env, "take_over").split(",") if n.strip())


def _check_claims(session: Session, found: FamilyCatalog, take_over: frozenset[str]) -> list[str]:
    """Refuse a family another database manages; return the roles to claim."""
    family = found.family
    allowed = frozenset(family.roles) if family.group in take_over else take_over
    to_claim, foreign = claims.unclaimed_or_foreign(
        found.roles, family.roles, session.database, allowed
    )
    if foreign:
        raise ClaimError(
            claims.foreign_message(found.roles, foreign, session.database, family.group)
        )
    return to_claim


def _claims(session: Session, names: list[str], found: FamilyCatalog) -> list[sql.Composable]:
    """The comments that claim *names*, as *found* (read before the changes) holds them:
    the changes add roles, whose comment is empty, and change no comment."""
    database = session.database
    return [
        ddl.comment_on_role(name, claims.claim_comment(found.roles.get(name), database))
        for name in names
    ]


def create_role_family(operations: Operations, operation: CreateRoleFamilyOp) -> None:
    session = session_for(operations.get_context())
    family = operation.family
    version = session.server_version
    if session.offline:
        # No catalog to read: emit the script for a database without the family.
        found = FamilyCatalog(family, {}, {}, version)
        stmts, _ = _create_and_grant(session, found, grant_to_migrator=operation.grant_to_migrator)
        session.execute_many(stmts)
        return
    found = FamilyCatalog.read(session, family)
    superuser = session.superuser
    _refuse_conflicts(session, found, superuser)
    to_claim = _check_claims(session, found, _take_over(operations))
    stmts, created = _create_and_grant(
        session, found, grant_to_migrator=operation.grant_to_migrator and not superuser
    )
    # One round trip: the changes, the claims, and the read that checks the
    # grants took (it sees the changes: they run first, in the same transaction).
    rows = session.execute_and_read(
        stmts,
        _claims(session, sorted(set(to_claim + created)), found),
        catalog.roles_query(version, family.roles),
    )
    after = FamilyCatalog.of(family, catalog.roles_from_rows(rows), version)
    for name in family.members:
        if drift := after.acts_as_group(name):
            raise FamilyConflictError(f"{drift.problem} after the grant")


def _create_and_grant(
    session: Session, found: FamilyCatalog, *, grant_to_migrator: bool
) -> tuple[list[sql.Composable], list[str]]:
    """The statements that create the missing roles and grants, and the roles they create."""
    family, version = found.family, session.server_version
    created = [name for name in family.roles if name not in found.roles]
    stmts: list[sql.Composable] = [ddl.create_nologin_role(name) for name in created]
    if grant_to_migrator:
        stmts.append(ddl.grant_to_current_user(family.group, version))
        # So the drain can see the members' sessions in detail and
        # --terminate can end them without pg_read_all_stats/pg_signal_backend.
        stmts += [ddl.grant_member_to_current_user(name, version) for name in family.members]
    for name in family.members:
        if name not in found.roles:
            stmts.append(ddl.grant_membership(family.group, name, version))
            stmts.append(ddl.set_login_role(name, family.group))
        elif drift := found.acts_as_group(name):
            stmts += drift.repair
    return stmts, created


def _refuse_conflicts(session: Session, found: FamilyCatalog, superuser: bool) -> None:
    """Existing roles that cannot become the family: refuse before any change."""
    family = found.family
    problems = found.conflicts() + [
        f"member role {name!r} exists but is not a member of {family.group!r}"
        for name in found.not_in_group()
    ]
    if not superuser and session.server_version >= PG16:
        problems += [
            f"the migration user has no ADMIN OPTION on existing role {name!r} (made by "
            f"another user); an administrator must GRANT {name} TO the migration user "
            "WITH ADMIN OPTION, or drop it"
            for name in catalog.roles_without_admin(session, found.roles)
        ]
    if problems:
        raise FamilyConflictError(
            f"cannot create role family {family.group!r}: " + "; ".join(problems)
        )


def _wait_gone(reader: Reader, users: list[str], timeout: float) -> None:
    from rolekit.deployment.drain import describe  # imported here: see _end_sessions

    deadline = time.monotonic() + timeout
    while live := catalog.sessions(reader, users):
        if time.monotonic() >= deadline:
            raise LiveSessionsError(
                f"{describe(live)} did not end within {timeout:.0f}s of being terminated; "
                "nothing was changed"
            )
        time.sleep(0.1)


def drop_role_family(operations: Operations, operation: DropRoleFamilyOp) -> None:
    migration_context = operations.get_context()
    session = session_for(migration_context)
    family = operation.family
    version = session.server_version
    if session.offline:
        present = list(family.roles)
        superuser = False
        oids: list[int] = []
    else:
        found = FamilyCatalog.read(session, family)
        present = [name for name in family.roles if name in found.roles]
        if not present:
            return
        _check_claims(session, found, _take_over(operations))
        superuser = session.superuser
        oids = [found.roles[n].oid for n in family.members if n in found.roles]
    if not superuser:
        # REASSIGN/DROP OWNED need the privileges of each role; a CREATEROLE
        # user on 16+ only holds ADMIN on the roles it created.  Granted
        # first, so the session check below sees and may end their sessions.
        for name in present:
            session.execute(ddl.grant_to_current_user(name, version))
    members = [n for n in family.members if n in present]
    if not session.offline and members:
        _end_sessions(session, operation, members)
    session.execute(ddl.reassign_owned(present, operation.reassign_to))
    session.execute(ddl.drop_owned(present))
    if members:
        session.execute(ddl.drop_roles(members))
    if family.group in present:
        session.execute(ddl.drop_roles([family.group]))
    if oids:
        session.after_commit.append(lambda reader: _no_orphans(reader, family.group, oids))


def _end_sessions(session: Session, operation: DropRoleFamilyOp, members: list[str]) -> None:
    """Refuse while members have sessions, or end them with ``terminate``."""
    live = catalog.sessions(session, members)
    if not live:
        return
    # imported here: only a family dropped under live sessions needs the drain
    from rolekit.deployment.drain import TERMINATE_WAIT, describe, require_terminate

    terminate = operation.terminate
    if terminate is None:
        terminate = x_flag(session.migration_context.environment_context, "terminate")
    if not terminate:
        counts = Counter(s.user for s in live)
        listed = ", ".join(f"{user}: {n}" for user, n in sorted(counts.items()))
        raise LiveSessionsError(
            f"refusing to drop role family {operation.family.group!r}: members have live "
            f"sessions ({listed}): {describe(live)}; nothing was changed. Move the applications "
            "away first, or pass -x terminate=true"
        )
    require_terminate(
        catalog.privileges(session, members), members, "dropping the family with terminate"
    )
    for member in members:
        session.execute(ddl.set_login(member, False))
    session.fetchall(ddl.terminate_backends(), ([s.pid for s in live],))
    _wait_gone(session, members, TERMINATE_WAIT)


def _no_orphans(reader: Reader, group: str, oids: list[int]) -> None:
    """After the commit: no backend may still run as a dropped member.

    A client that logged in between the termination and the commit keeps a
    session whose role no longer exists; say so instead of exiting 0.
    """
    pids = catalog.sessions_of_oids(reader, oids)
    if pids:
        raise VerificationError(
            f"family {group!r} is dropped, but backend(s) {', '.join(map(str, pids))} still run "
            "as one of its members (they logged in during the drop); end them with "
            "SELECT pg_terminate_backend(pid)"
        )


def enable_login_tracking(operations: Operations, operation: EnableLoginTrackingOp) -> None:
    session = session_for(operations.get_context())
    superuser = True if session.offline else session.superuser
    if why := tracking.unavailable_reason(session.server_version, superuser):
        log.warning("enable_login_tracking: not installed: %s", why)
        return
    if session.offline:  # a script: every object created fresh, so a taken name fails it
        for stmt in [
            *tracking.install_statements(schema_exists=False),
            tracking.trigger_statement(),
        ]:
            session.execute(stmt)
        return
    # The login function runs as a superuser: refuse to build it on anything
    # someone else made (issue 23), before changing anything.
    if problems := tracking.trust_problems(session, installing=True):
        raise TrackingError(
            f"enable_login_tracking: refusing to install login tracking: {'; '.join(problems)}; "
            f"nothing was changed. rolekit did not make these: check who did, drop them, "
            f"and re-run"
        )
    steps = tracking.install_statements(schema_exists=tracking.schema_exists(session))
    for stmt in steps + tracking.old_install_statements(session, keep_marks=True):
        session.execute(stmt)
    trigger = tracking.trigger_statement()
    session.after_commit.append(lambda reader: _create_login_trigger(reader, trigger))


def _create_login_trigger(reader: Reader, trigger: sql.Composable) -> None:
    """After the commit, on the control connection: one statement, one short lock
    (see :func:`rolekit.pg.tracking.trigger_statement`)."""
    log.info("creating the login event trigger (holds new logins for this statement only)")
    try:
        reader.fetchall(trigger)
    except psycopg2.Error as exc:
        raise VerificationError(
            f"the login tracking table and function are committed, but creating the login "
            f"event trigger failed: {first_line(exc)}; tracking is off (rolekit status says "
            "so). Fix the cause, then downgrade and upgrade that revision"
        ) from None


def disable_login_tracking(operations: Operations, operation: DisableLoginTrackingOp) -> None:
    session = session_for(operations.get_context())
    if session.server_version < tracking.PG17:
        return  # nothing can have been installed
    if session.offline:
        for stmt in tracking.remove_statements():
            session.execute(stmt)
        return
    if not session.superuser:
        if not tracking.has_trigger(session):
            return
        raise PrivilegeError(
            "disable_login_tracking: dropping the login event trigger needs a superuser; "
            "nothing was changed"
        )
    steps = tracking.old_install_statements(session, keep_marks=False)
    if tracking.trust_problems(session, installing=True):
        # not rolekit's schema: end the trigger, touch nothing in it
        log.warning(
            "disable_login_tracking: left schema %s alone: rolekit did not make it",
            tracking.SCHEMA,
        )
        steps.append(tracking.remove_statements()[0])
    else:
        steps += tracking.remove_statements()
    for stmt in steps:
        session.execute(stmt)

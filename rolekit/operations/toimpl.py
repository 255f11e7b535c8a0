"""Implements the operations declared in :mod:`.ops`."""

from __future__ import annotations

import time
from collections import Counter

from alembic.operations import Operations
from psycopg2 import sql

from rolekit import catalog, ddl
from rolekit.catalog import PG16, Membership, RoleInfo
from rolekit.errors import FamilyConflictError, LiveSessionsError
from rolekit.family import RoleFamily
from rolekit.operations.ops import CreateRoleFamilyOp, DropRoleFamilyOp
from rolekit.runtime.config import x_flag
from rolekit.runtime.session import Session, session_for


def _login_role_setting(info: RoleInfo) -> str | None:
    for setting in info.settings:
        key, _, value = setting.partition("=")
        if key == "role":
            return value.strip('"')
    return None


def family_conflicts(
    family: RoleFamily, existing: dict[str, RoleInfo], members_of_group: list[Membership]
) -> list[str]:
    """What stops *existing* roles from being part of *family* (empty: none)."""
    problems: list[str] = []
    group = existing.get(family.group)
    if group is not None:
        for flag, text in (
            (group.can_login, "can log in (a group must be NOLOGIN)"),
            (group.superuser, "is a superuser"),
            (group.replication, "has REPLICATION"),
            (group.bypassrls, "has BYPASSRLS"),
        ):
            if flag:
                problems.append(f"group role {family.group!r} {text}")
    in_group = {m.member for m in members_of_group if m.group == family.group}
    for name in family.members:
        member = existing.get(name)
        if member is None:
            continue
        if member.superuser:
            problems.append(f"member role {name!r} is a superuser")
        if name not in in_group:
            problems.append(f"member role {name!r} exists but is not a member of {family.group!r}")
        login_role = _login_role_setting(member)
        if login_role not in (None, family.group):
            problems.append(
                f"member role {name!r} has 'SET role = {login_role}', not {family.group!r}"
            )
    return problems


def _check_membership_options(session: Session, family: RoleFamily) -> None:
    """Verify that each member's login-time ``SET role`` will take effect."""
    existing = catalog.roles(session, family.members)
    rows = {m.member: m for m in catalog.memberships(session, [family.group])}
    for name in family.members:
        row = rows.get(name)
        if row is None or not (row.inherit_option and row.set_option):
            raise FamilyConflictError(
                f"member role {name!r} lacks INHERIT/SET on {family.group!r} after the grant; "
                "its sessions would not switch to the group"
            )
        if _login_role_setting(existing[name]) != family.group:
            raise FamilyConflictError(f"member role {name!r} has no 'SET role = {family.group}'")


@Operations.implementation_for(CreateRoleFamilyOp)
def create_role_family(operations: Operations, operation: CreateRoleFamilyOp) -> None:
    session = session_for(operations.get_context())
    family = operation.family
    version = session.server_version
    if session.offline:
        # No catalog to read: emit the script for a database without the family.
        existing: dict[str, RoleInfo] = {}
        members_of_group: list[Membership] = []
        superuser = False
    else:
        existing = catalog.roles(session, family.roles)
        members_of_group = catalog.memberships(session, [family.group])
        superuser = catalog.current_user_is_superuser(session)
        problems = family_conflicts(family, existing, members_of_group)
        if not superuser and version >= PG16:
            problems += [
                f"the migration user has no ADMIN OPTION on existing role {name!r} (made by "
                f"another user); an administrator must GRANT {name} TO the migration user "
                "WITH ADMIN OPTION, or drop it"
                for name in catalog.roles_without_admin(session, existing)
            ]
        if problems:
            raise FamilyConflictError(
                f"cannot create role family {family.group!r}: " + "; ".join(problems)
            )
    for name in family.roles:
        if name not in existing:
            session.execute(ddl.create_nologin_role(name))
    if operation.grant_to_migrator and not superuser:
        session.execute(ddl.grant_to_current_user(family.group, version))
    current = {m.member: m for m in members_of_group}
    for name in family.members:
        row = current.get(name)
        if row is None or not (row.inherit_option and row.set_option):
            session.execute(ddl.grant_membership(family.group, name, version))
        info = existing.get(name)
        if info is None or _login_role_setting(info) is None:
            session.execute(ddl.set_login_role(name, family.group))
    if not session.offline and version >= PG16:
        _check_membership_options(session, family)


def _wait_gone(session: Session, users: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while catalog.sessions(session, users) and time.monotonic() < deadline:
        time.sleep(0.1)


@Operations.implementation_for(DropRoleFamilyOp)
def drop_role_family(operations: Operations, operation: DropRoleFamilyOp) -> None:
    migration_context = operations.get_context()
    session = session_for(migration_context)
    family = operation.family
    if session.offline:
        present = list(family.roles)
        superuser = False
    else:
        existing = catalog.roles(session, family.roles)
        present = [name for name in family.roles if name in existing]
        if not present:
            return
        superuser = catalog.current_user_is_superuser(session)
        live = catalog.sessions(session, [n for n in family.members if n in existing])
        if live:
            terminate = operation.terminate
            if terminate is None:
                terminate = x_flag(migration_context.environment_context, "terminate")
            if not terminate:
                counts = Counter(s.user for s in live)
                listed = ", ".join(f"{user}: {n}" for user, n in sorted(counts.items()))
                raise LiveSessionsError(
                    f"refusing to drop role family {family.group!r}: members have live sessions "
                    f"({listed}); move the applications away first, or pass -x terminate=true"
                )
            for info in live:
                session.fetchall(sql.SQL("SELECT pg_terminate_backend(%s, 5000)"), (info.pid,))
            _wait_gone(session, [s.user for s in live])
    version = session.server_version
    if not superuser:
        # REASSIGN/DROP OWNED need the privileges of each role; a CREATEROLE
        # user on 16+ only holds ADMIN on the roles it created.
        for name in present:
            session.execute(ddl.grant_to_current_user(name, version))
    session.execute(ddl.reassign_owned(present, operation.reassign_to))
    session.execute(ddl.drop_owned(present))
    members = [n for n in family.members if n in present]
    if members:
        session.execute(ddl.drop_roles(members))
    if family.group in present:
        session.execute(ddl.drop_roles([family.group]))

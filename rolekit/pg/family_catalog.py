"""One family as the catalog holds it, compared with what the project declares.

Like alembic_utils' entities: :class:`FamilyCatalog` reads its own state
from the server and says how it differs from the declaration.  The
operations (``create_role_family``), the login repeatable (``FamilyLogin``)
and ``rolekit status``/``check`` all ask it, so an upgrade and ``check``
never disagree about what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from psycopg2 import sql

from rolekit.model.family import RoleFamily
from rolekit.pg import catalog, ddl
from rolekit.pg.catalog import Membership, Reader, RoleInfo
from rolekit.project.state import FamilyState, Phase, Retire

if TYPE_CHECKING:
    from rolekit.pg.session import Session


class Drift(NamedTuple):
    """A difference between the catalog and the declaration, and how to repair it."""

    role: str
    problem: str
    #: statements that converge the catalog; empty when it cannot be repaired
    repair: tuple[sql.Composed, ...] = ()


class FamilyCatalog(NamedTuple):
    """The roles, memberships and settings of one family, as the server holds them."""

    family: RoleFamily
    roles: Mapping[str, RoleInfo]
    #: member name -> its membership in the group
    memberships: Mapping[str, Membership]
    server_version: int

    @classmethod
    def read(cls, reader: Reader, family: RoleFamily) -> FamilyCatalog:
        """Read the family's catalog state (one round trip)."""
        return cls.of(family, catalog.roles(reader, family.roles), reader.server_version)

    @classmethod
    def read_after(
        cls, session: Session, family: RoleFamily, changes: Sequence[sql.Composable]
    ) -> FamilyCatalog:
        """Run *changes* (rolekit's own statements, no parameters), then read the
        family's catalog state as they left it: one round trip for both."""
        version = session.server_version
        rows = session.execute_and_read(changes, [], catalog.roles_query(version, family.roles))
        return cls.of(family, catalog.roles_from_rows(rows), version)

    @classmethod
    def of(
        cls, family: RoleFamily, roles: Mapping[str, RoleInfo], server_version: int
    ) -> FamilyCatalog:
        """Build it from roles a planner already read for many families at once."""
        known = {name: roles[name] for name in family.roles if name in roles}
        mine = {
            m.member: m
            for name in family.members
            if name in known
            for m in known[name].member_of
            if m.group == family.group
        }
        return cls(family, known, mine, server_version)

    # -- shape: is it a family at all? ----------------------------------------------

    def conflicts(self) -> list[str]:
        """What stops the existing roles from being this family (empty: none).

        These cannot be repaired by rolekit: a group that can log in or a
        member that is a superuser was made so on purpose by someone.
        """
        problems: list[str] = []
        family = self.family
        group = self.roles.get(family.group)
        if group is not None:
            for flag, text in (
                (group.can_login, "can log in (a group must be NOLOGIN)"),
                (group.superuser, "is a superuser"),
                (group.replication, "has REPLICATION"),
                (group.bypassrls, "has BYPASSRLS"),
            ):
                if flag:
                    problems.append(f"group role {family.group!r} {text}")
        for name in family.members:
            member = self.roles.get(name)
            if member is None:
                continue
            if member.superuser:
                problems.append(f"member role {name!r} is a superuser")
            problems += self._login_role_conflicts(member)
        return problems

    def _login_role_conflicts(self, member: RoleInfo) -> list[str]:
        group = self.family.group
        found = []
        if member.login_role not in (None, group):
            found.append(
                f"member role {member.name!r} has 'SET role = {member.login_role}', not {group!r}"
            )
        for database, role in sorted(member.database_login_roles.items()):
            if role.strip('"') != group:
                found.append(
                    f"member role {member.name!r} has 'SET role = {role}' in database "
                    f"{database!r}, so its sessions there would not act as {group!r}"
                )
        return found

    def not_in_group(self) -> list[str]:
        """Existing members that are not members of the group at all."""
        return [
            name
            for name in self.family.members
            if name in self.roles and name not in self.memberships
        ]

    # -- does a member's session act as the group? ------------------------------------

    def acts_as_group(self, member: str) -> Drift | None:
        """Why *member*'s sessions would not run as the group (``None``: they would).

        A session runs as the group only if the member is in the group with
        INHERIT and, from PostgreSQL 16, SET (without SET, ``ALTER ROLE ...
        SET role`` is silently ignored at login with a WARNING), and if its
        login-time ``role`` setting names the group.
        """
        family = self.family
        info = self.roles.get(member)
        if info is None:
            return Drift(member, f"member role {member!r} does not exist")
        conflicts = self._login_role_conflicts(info)
        if conflicts:
            return Drift(member, "; ".join(conflicts))  # not repairable: someone chose it
        repair: list[sql.Composed] = []
        problems: list[str] = []
        row = self.memberships.get(member)
        if row is None or not (row.inherit_option and row.set_option):
            what = "is not a member of" if row is None else "lacks INHERIT/SET on"
            problems.append(f"{what} {family.group!r}")
            repair.append(ddl.grant_membership(family.group, member, self.server_version))
        if info.login_role is None:
            problems.append(f"has no 'SET role = {family.group}'")
            repair.append(ddl.set_login_role(member, family.group))
        if not problems:
            return None
        return Drift(
            member,
            f"member role {member!r} {' and '.join(problems)}; its sessions would not act as "
            f"{family.group!r}",
            tuple(repair),
        )

    # -- login state against the rotation state ------------------------------------

    def login_drift(self, state: FamilyState) -> list[Drift]:
        """LOGIN/NOLOGIN and VALID UNTIL differences from *state*, with their repair."""
        drifts = []
        for name in self.family.members:
            info = self.roles.get(name)
            if info is None:
                continue
            if name in state.login:
                repair = [ddl.set_login(name, True)] if not info.can_login else []
                if info.valid_until is not None:
                    repair.append(ddl.clear_valid_until(name))
                if not info.can_login:
                    problem = f"{name!r} is NOLOGIN but the rotation state lets it log in"
                elif info.expired:
                    problem = f"{name!r} has an expired password (VALID UNTIL) but may log in"
                else:
                    problem = f"{name!r} has a VALID UNTIL the rotation state does not set"
                if repair:
                    drifts.append(Drift(name, problem, tuple(repair)))
                continue
            if info.can_login:
                drifts.append(
                    Drift(
                        name,
                        f"{name!r} is LOGIN but the rotation state says NOLOGIN",
                        (ddl.set_login(name, False),),
                    )
                )
            if state.retire == Retire.EXPIRE and not info.expired:
                drifts.append(
                    Drift(name, f"{name!r} should be expired", (ddl.expire_password(name),))
                )
        return drifts

    def can_log_in(self) -> list[str]:
        """Members that may log in now."""
        return [n for n in self.family.members if n in self.roles and self.roles[n].can_log_in_now]

    def begun_past(self, state: FamilyState) -> bool:
        """The catalog is in the overlap while *state* is steady: a ``begin`` committed
        and was killed before it wrote the state file."""
        return state.phase == Phase.STEADY and set(self.can_log_in()) == set(self.family.members)

"""Declares rolekit's Alembic operations (implemented in :mod:`.toimpl`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic.operations import MigrateOperation, Operations

from rolekit.model.family import RoleFamily
from rolekit.model.names import check_role_name


@Operations.register_operation("create_role_family")
class CreateRoleFamilyOp(MigrateOperation):
    """Create (or converge to) a role family; see :func:`create_role_family`."""

    def __init__(self, family: RoleFamily, *, grant_to_migrator: bool = True) -> None:
        self.family = family
        self.grant_to_migrator = grant_to_migrator

    @classmethod
    def create_role_family(
        cls,
        operations: Operations,
        group: str,
        members: Sequence[str] | None = None,
        *,
        grant_to_migrator: bool = True,
    ) -> Any:
        """Create a NOLOGIN *group* and two NOLOGIN *members* whose sessions
        start as the group.

        Idempotent: existing roles are kept when compatible and the family is
        completed; a conflicting role (a group that can log in, a superuser,
        a member outside the group...) raises
        :class:`~rolekit.errors.FamilyConflictError` before any change.

        :param grant_to_migrator: when the migration user is not a superuser,
            make it a member of the group (INHERIT and SET on 16+, which no
            longer gives a role's creator either), so later revisions can
            create objects owned by the group and grant on them.
        """
        return operations.invoke(cls.of(group, members, grant_to_migrator=grant_to_migrator))

    @classmethod
    def of(
        cls, group: str, members: Sequence[str] | None = None, *, grant_to_migrator: bool = True
    ) -> CreateRoleFamilyOp:
        """The operation for *group* and its *members*, checked."""
        return cls(RoleFamily.of(group, members), grant_to_migrator=grant_to_migrator)

    def reverse(self) -> DropRoleFamilyOp:
        return DropRoleFamilyOp(self.family)


@Operations.register_operation("drop_role_family")
class DropRoleFamilyOp(MigrateOperation):
    """Drop a role family; see :func:`drop_role_family`."""

    def __init__(
        self,
        family: RoleFamily,
        *,
        reassign_to: str | None = None,
        terminate: bool | None = None,
    ) -> None:
        self.family = family
        self.reassign_to = reassign_to
        self.terminate = terminate

    @classmethod
    def drop_role_family(
        cls,
        operations: Operations,
        group: str,
        members: Sequence[str] | None = None,
        *,
        reassign_to: str | None = None,
        terminate: bool | None = None,
    ) -> Any:
        """Drop the family: reassign what its roles own, drop their privileges,
        drop the members, then the group.

        Refuses while a member has live sessions, unless *terminate* is true
        (or ``-x terminate=true`` is given on the command line).

        :param reassign_to: the role that receives the objects; the migration
            user when omitted.  ``REASSIGN OWNED`` acts on the current
            database only: objects in other databases make ``DROP ROLE`` fail.
        """
        return operations.invoke(
            cls.of(group, members, reassign_to=reassign_to, terminate=terminate)
        )

    @classmethod
    def of(
        cls,
        group: str,
        members: Sequence[str] | None = None,
        *,
        reassign_to: str | None = None,
        terminate: bool | None = None,
    ) -> DropRoleFamilyOp:
        """The operation for *group* and its *members*, checked."""
        if reassign_to is not None:
            check_role_name(reassign_to, what="reassign_to role name")
        return cls(RoleFamily.of(group, members), reassign_to=reassign_to, terminate=terminate)

    def reverse(self) -> CreateRoleFamilyOp:
        return CreateRoleFamilyOp(self.family)


@Operations.register_operation("enable_login_tracking")
class EnableLoginTrackingOp(MigrateOperation):
    """Install exact login tracking; see :func:`enable_login_tracking`."""

    @classmethod
    def enable_login_tracking(cls, operations: Operations) -> Any:
        """Record the logins of members a rotation is moving away from (PostgreSQL 17+).

        Installs a ``login`` event trigger (see :mod:`rolekit.pg.tracking`) so
        ``finish`` refuses while the old member logged in within the quiet
        period, even through connections too short to sample.  Where it
        cannot be installed (before 17, or without a superuser) it logs why
        and does nothing: the drain samples ``pg_stat_activity`` instead.
        """
        return operations.invoke(cls())

    def reverse(self) -> DisableLoginTrackingOp:
        return DisableLoginTrackingOp()


@Operations.register_operation("disable_login_tracking")
class DisableLoginTrackingOp(MigrateOperation):
    """Remove login tracking; see :func:`disable_login_tracking`."""

    @classmethod
    def disable_login_tracking(cls, operations: Operations) -> Any:
        """Remove what :func:`enable_login_tracking` installed (the downgrade)."""
        return operations.invoke(cls())

    def reverse(self) -> EnableLoginTrackingOp:
        return EnableLoginTrackingOp()

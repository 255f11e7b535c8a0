"""The declarative role family: one group and two alternating members."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from rolekit.errors import RoleNameError
from rolekit.model.names import check_role_name


class RoleFamily(NamedTuple):
    """A NOLOGIN group that owns everything, and two members that log in.

    Only one member logs in at a time outside a rotation; each member's
    sessions start as the group (``ALTER ROLE member SET role = group``) so
    the objects they create belong to the group and survive a rotation.
    """

    group: str
    members: tuple[str, str]

    @classmethod
    def of(cls, group: str, members: Sequence[str] | None = None) -> RoleFamily:
        """Validate and build a family; members default to ``<group>_a``/``_b``."""
        check_role_name(group, what="group role name")
        if members is None:
            members = (f"{group}_a", f"{group}_b")
        if isinstance(members, str) or len(members) != 2:
            raise RoleNameError(f"family {group!r} needs exactly two member roles")
        first, second = (check_role_name(m, what="member role name") for m in members)
        if len({group, first, second}) != 3:
            raise RoleNameError(f"family {group!r}: group and members must have distinct names")
        return cls(group, (first, second))

    @property
    def roles(self) -> tuple[str, str, str]:
        return (self.group, *self.members)

    def other(self, member: str) -> str:
        """The member that is not *member*."""
        first, second = self.members
        if member not in self.members:
            raise RoleNameError(f"{member!r} is not a member of family {self.group!r}")
        return second if member == first else first

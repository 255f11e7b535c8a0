"""``op`` for revisions, typed: Alembic's operations and rolekit's.

``from alembic import op`` works at run time, but a type checker knows only
Alembic's own operations there: rolekit's are registered when
:mod:`rolekit.operations` is imported, so ``mypy --strict`` reports
``Module has no attribute "create_role_family"``.  A revision that imports
``op`` from here type-checks, and runs the same operations::

    from rolekit.operations import op

    def upgrade() -> None:
        op.create_role_family("my_app", ["my_app_tom", "my_app_jerry"])
        op.execute("CREATE SCHEMA my_schema AUTHORIZATION my_app")
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op as _alembic_op
from alembic.op import *  # noqa: F403  (Alembic's operations, typed by alembic/op.pyi)

from rolekit.operations.ops import (
    CreateRoleFamilyOp,
    DisableLoginTrackingOp,
    DropRoleFamilyOp,
    EnableLoginTrackingOp,
)


def create_role_family(
    group: str, members: Sequence[str] | None = None, *, grant_to_migrator: bool = True
) -> None:
    """``op.create_role_family``: see :meth:`~rolekit.operations.ops.CreateRoleFamilyOp.create_role_family`."""
    _alembic_op.invoke(CreateRoleFamilyOp.of(group, members, grant_to_migrator=grant_to_migrator))


def drop_role_family(
    group: str,
    members: Sequence[str] | None = None,
    *,
    reassign_to: str | None = None,
    terminate: bool | None = None,
) -> None:
    """``op.drop_role_family``: see :meth:`~rolekit.operations.ops.DropRoleFamilyOp.drop_role_family`."""
    _alembic_op.invoke(
        DropRoleFamilyOp.of(group, members, reassign_to=reassign_to, terminate=terminate)
    )


def enable_login_tracking() -> None:
    """``op.enable_login_tracking``: see :meth:`~rolekit.operations.ops.EnableLoginTrackingOp.enable_login_tracking`."""
    _alembic_op.invoke(EnableLoginTrackingOp())


def disable_login_tracking() -> None:
    """``op.disable_login_tracking``: see :meth:`~rolekit.operations.ops.DisableLoginTrackingOp.disable_login_tracking`."""
    _alembic_op.invoke(DisableLoginTrackingOp())

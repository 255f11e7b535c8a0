"""Alembic operations for role families and login tracking.

``op.create_role_family`` / ``op.drop_role_family`` and
``op.enable_login_tracking`` / ``op.disable_login_tracking``, declared in
``ops`` and implemented in ``toimpl``; importing this package
registers them.  Revisions that want them type-checked import
``from rolekit.operations import op``.

Each implementation is registered as a small function that imports
``toimpl`` when an operation first runs: every ``alembic upgrade`` imports
this package, and one with no revision to run (a no-op deploy) never needs
the catalog, claim and DDL modules behind it.
"""

from __future__ import annotations

from typing import Any

from alembic.operations import MigrateOperation, Operations

from rolekit.operations.ops import (
    CreateRoleFamilyOp,
    DisableLoginTrackingOp,
    DropRoleFamilyOp,
    EnableLoginTrackingOp,
)


def _register(op_class: type[MigrateOperation], name: str) -> None:
    def implementation(operations: Operations, operation: Any) -> None:
        from rolekit.operations import toimpl

        getattr(toimpl, name)(operations, operation)

    implementation.__name__ = implementation.__qualname__ = name
    Operations.implementation_for(op_class)(implementation)


_register(CreateRoleFamilyOp, "create_role_family")
_register(DropRoleFamilyOp, "drop_role_family")
_register(EnableLoginTrackingOp, "enable_login_tracking")
_register(DisableLoginTrackingOp, "disable_login_tracking")

__all__ = [
    "CreateRoleFamilyOp",
    "DisableLoginTrackingOp",
    "DropRoleFamilyOp",
    "EnableLoginTrackingOp",
]

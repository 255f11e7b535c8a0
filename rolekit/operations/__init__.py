"""Alembic operations for role families and login tracking.

``op.create_role_family`` / ``op.drop_role_family`` and
``op.enable_login_tracking`` / ``op.disable_login_tracking``, declared in
``ops`` and implemented in ``toimpl``; importing this package
registers them.  Revisions that want them type-checked import
``from rolekit.operations import op``.
"""

from rolekit.operations import toimpl as _toimpl  # noqa: F401  (registers implementations)
from rolekit.operations.ops import (
    CreateRoleFamilyOp,
    DisableLoginTrackingOp,
    DropRoleFamilyOp,
    EnableLoginTrackingOp,
)

__all__ = [
    "CreateRoleFamilyOp",
    "DisableLoginTrackingOp",
    "DropRoleFamilyOp",
    "EnableLoginTrackingOp",
]

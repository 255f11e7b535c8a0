"""Alembic operations for role families: ``op.create_role_family`` and
``op.drop_role_family``.  Importing this package registers them."""

from rolekit.operations import toimpl as _toimpl  # noqa: F401  (registers implementations)
from rolekit.operations.ops import CreateRoleFamilyOp, DropRoleFamilyOp

__all__ = ["CreateRoleFamilyOp", "DropRoleFamilyOp"]

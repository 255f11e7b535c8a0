"""Render operations without a server, like Alembic's ``op_fixture``."""

from __future__ import annotations

import io

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

import rolekit.operations  # noqa: F401  (registers op.create_role_family & co.)
from rolekit.pg.session import PG_VERSION_OPTION


def op_fixture(pg_version: int = 16) -> tuple[Operations, io.StringIO]:
    """An ``op`` in offline (``--sql``) mode for PostgreSQL *pg_version*, and its output.

    rolekit's statements differ on 16+ (membership options), hence the version.
    """
    output = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql",
        opts={"as_sql": True, "output_buffer": output, PG_VERSION_OPTION: pg_version},
    )
    return Operations(context), output

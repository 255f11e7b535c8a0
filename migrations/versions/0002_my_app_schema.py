"""A schema the application owns through its group role.

Revision ID: 0002
Revises: 0001
"""

from rolekit.operations import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS my_schema AUTHORIZATION my_app")


def downgrade() -> None:
    # drop_role_family in 0001 reassigns and drops what my_app owns; the schema
    # itself goes here so the database ends as it started.
    op.execute("DROP SCHEMA IF EXISTS my_schema CASCADE")

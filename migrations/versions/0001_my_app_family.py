"""Create the my_app role family (the seeds' group and its two members).

Revision ID: 0001
Revises:
"""

from rolekit.operations import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_role_family("my_app", ["my_app_tom", "my_app_jerry"])


def downgrade() -> None:
    op.drop_role_family("my_app", ["my_app_tom", "my_app_jerry"])

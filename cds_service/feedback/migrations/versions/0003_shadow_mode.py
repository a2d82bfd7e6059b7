"""Shadow mode: issued cards can be silent (recorded, never shown), and hook calls are counted.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("issued_cards", sa.Column("silent", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "hook_calls",
        sa.Column("call_key", sa.String(64), nullable=False),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("hook", sa.String(100), nullable=False),
        sa.Column("called_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cards", sa.Integer(), nullable=False),
        sa.Column("silent", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("call_key", name="pk_hook_calls"),
    )
    op.create_index("ix_hook_calls_called_at", "hook_calls", ["called_at"])


def downgrade() -> None:
    op.drop_table("hook_calls")
    op.drop_column("issued_cards", "silent")

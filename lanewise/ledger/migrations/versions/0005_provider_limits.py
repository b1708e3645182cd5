"""Limits a provider stated (e.g. OpenAI's enqueued-token limit in a refusal), learned
per provider and model so the next run plans within them: the provider_limits table.

The value is a BIGINT: enqueued-token limits of high tiers pass 2**31.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create provider_limits."""
    op.create_table(
        "provider_limits",
        sa.Column("provider", sa.String(20), primary_key=True),
        sa.Column("model", sa.String(100), primary_key=True),
        sa.Column("name", sa.String(50), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.Column("learned_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop provider_limits."""
    op.drop_table("provider_limits")

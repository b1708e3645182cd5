"""Keep 1-hour cache writes and reasoning tokens apart on items.

1-hour cache writes are billed at another rate than 5-minute ones (Anthropic: 2x input
against 1.25x), so an item keeps them in their own column; reasoning tokens are already
inside output_tokens and are kept apart to be shown. Existing items get 0 (the ledger
had no 1-hour writes before: it counted every write in cache_write_tokens).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = ("cache_write_1h_tokens", "reasoning_tokens")


def upgrade() -> None:
    """Add items.cache_write_1h_tokens and items.reasoning_tokens (NOT NULL, default 0)."""
    with op.batch_alter_table("items") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    """Drop them again."""
    with op.batch_alter_table("items") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)

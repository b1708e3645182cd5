"""The live lane's tables: live calls, the result cache shared by both lanes, and the
deferred-work queue; items learn their request's content hash and where a cached
answer came from.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

USAGE = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "cache_write_1h_tokens",
         "output_tokens", "reasoning_tokens")


def upgrade() -> None:
    """Create live_calls, result_cache and queue_items; add items.content_hash and
    items.cached_from."""
    op.create_table(
        "live_calls",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("answered_by", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("context", sa.Text),
        sa.Column("output_text", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("fallback_reason", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.Float, nullable=False),
        *(sa.Column(name, sa.Integer, nullable=False, server_default="0") for name in USAGE),
        sa.Column("cost_picodollars", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cached_from", sa.String(100)),
        sa.Column("queue_item_id", sa.Integer),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Index("ix_live_calls_task_created", "task", "created_at"),
        sa.Index("ix_live_calls_hash", "content_hash"),
    )
    op.create_table(
        "result_cache",
        sa.Column("content_hash", sa.String(64), primary_key=True),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("output_text", sa.Text, nullable=False),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("cost_picodollars", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("live_cost_picodollars", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float),
    )
    op.create_table(
        "queue_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("row", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("run_key", sa.String(200)),
        sa.Column("claimed_by", sa.String(200)),
        sa.Column("claimed_at", sa.Float),
        sa.Column("output_text", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("cost_picodollars", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.UniqueConstraint("task", "key", name="uq_queue_task_key"),
        sa.Index("ix_queue_status_task", "status", "task"),
        sa.Index("ix_queue_run_key", "run_key"),
    )
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(64)))
        batch.add_column(sa.Column("cached_from", sa.String(100)))


def downgrade() -> None:
    """Drop what upgrade made."""
    with op.batch_alter_table("items") as batch:
        batch.drop_column("cached_from")
        batch.drop_column("content_hash")
    op.drop_table("queue_items")
    op.drop_table("result_cache")
    op.drop_table("live_calls")

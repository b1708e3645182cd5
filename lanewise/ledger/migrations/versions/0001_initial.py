"""The first ledger: runs, shards and items.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create runs, shards and items."""
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_key", sa.String(200), nullable=False, unique=True),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("input_url", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("results_url", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
    )
    op.create_table(
        "shards",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("shard_key", sa.String(250), nullable=False, unique=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("jsonl_url", sa.Text, nullable=False),
        sa.Column("request_count", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("estimated_tokens", sa.BigInteger, nullable=False),
        sa.Column("provider_batch_id", sa.String(100), unique=True),
        sa.Column("provider_status", sa.String(30)),
        sa.Column("failure", sa.Text),
        sa.Column("intent_at", sa.Float),
        sa.Column("submitted_at", sa.Float),
        sa.Column("ended_at", sa.Float),
    )
    op.create_index("ix_shards_run_id", "shards", ["run_id"])
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("row_number", sa.Integer, nullable=False),
        sa.Column("input_key", sa.Text),
        sa.Column("dedup_key", sa.Text),
        sa.Column("custom_id", sa.String(80)),
        sa.Column("shard_id", sa.Integer, sa.ForeignKey("shards.id")),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("excerpted", sa.Boolean, nullable=False),
        sa.Column("error_field", sa.String(100)),
        sa.Column("error_reason", sa.Text),
        sa.Column("output_text", sa.Text),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("cached_input_tokens", sa.Integer, nullable=False),
        sa.Column("cache_write_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cost_picodollars", sa.BigInteger, nullable=False),
        sa.Column("live_cost_picodollars", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("run_id", "row_number", name="uq_items_run_row"),
        sa.UniqueConstraint("run_id", "dedup_key", name="uq_items_run_key"),
    )
    op.create_index("ix_items_run_custom_id", "items", ["run_id", "custom_id"])
    op.create_index("ix_items_run_status", "items", ["run_id", "status"])
    op.create_index("ix_items_shard", "items", ["shard_id"])


def downgrade() -> None:
    """Drop everything."""
    op.drop_table("items")
    op.drop_table("shards")
    op.drop_table("runs")

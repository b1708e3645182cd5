"""Budgets and the routing review: a batch run's cost estimate, a live call's input row.

* runs.estimate_upper_picodollars / runs.estimate_expected_picodollars: the offline cost
  estimate made before the run sent anything (every request at the task's max output
  tokens; and at its measured average), checked against the task's budget and shown
  against the billed cost when the run ends. NULL for runs planned before 0010.
* live_calls.request_row: the input row a live call answered (JSON), so `lanewise whatif
  --sample` can send recent requests again through another lane or model.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the estimate columns to runs and request_row to live_calls."""
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("estimate_upper_picodollars", sa.BigInteger))
        batch.add_column(sa.Column("estimate_expected_picodollars", sa.BigInteger))
    with op.batch_alter_table("live_calls") as batch:
        batch.add_column(sa.Column("request_row", sa.Text))


def downgrade() -> None:
    """Drop the columns."""
    with op.batch_alter_table("live_calls") as batch:
        batch.drop_column("request_row")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("estimate_expected_picodollars")
        batch.drop_column("estimate_upper_picodollars")

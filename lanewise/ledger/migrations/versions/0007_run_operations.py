"""What operating a run needs to show: its lane, its date window and its Prefect flow run.

`lanewise runs` lists runs one per row with their window and a link to the Prefect flow
run that drove them last; before this, the window was only inside the run key.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add runs.lane, runs.window_start, runs.window_end, runs.prefect_flow_run_id."""
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("lane", sa.String(10), nullable=False,
                                   server_default="batch"))
        batch.add_column(sa.Column("window_start", sa.String(10)))
        batch.add_column(sa.Column("window_end", sa.String(10)))
        batch.add_column(sa.Column("prefect_flow_run_id", sa.String(64)))


def downgrade() -> None:
    """Drop the four columns."""
    with op.batch_alter_table("runs") as batch:
        for name in ("prefect_flow_run_id", "window_end", "window_start", "lane"):
            batch.drop_column(name)

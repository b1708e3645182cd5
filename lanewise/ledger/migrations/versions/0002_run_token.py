"""Give every run a random token, carried in its custom_ids.

Revision ID: 0002
Revises: 0001
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add runs.token, filling existing runs with fresh tokens."""
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("token", sa.String(12), nullable=True))
    connection = op.get_bind()
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("token", sa.String))
    for (run_id,) in connection.execute(sa.select(runs.c.id)).all():
        connection.execute(runs.update().where(runs.c.id == run_id)
                           .values(token=secrets.token_hex(3)))
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("token", existing_type=sa.String(12), nullable=False)


def downgrade() -> None:
    """Drop runs.token."""
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("token")

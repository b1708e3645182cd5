"""What a row answered from the result cache saved: items.cache_saving_picodollars.

A `cached` item costs nothing; the run summary shows what those rows would have cost
had they been sent again at batch price (the original answer's usage priced at the
batch rates), fixed when the row is planned so a later price change or a forgotten
original does not rewrite a finished run's figures.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add items.cache_saving_picodollars (0 for every item not answered from the cache)."""
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("cache_saving_picodollars", sa.BigInteger, nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("items") as batch:
        batch.drop_column("cache_saving_picodollars")

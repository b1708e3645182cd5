"""Items per run and state, kept by the database itself (PostgreSQL): run_item_counts.

Progress is reported after every shard, and counting a run's items by state reads every
item of the run on PostgreSQL (the heap, for visibility): a run of N items in S shards
read N x S rows to report progress. A statement-level trigger with transition tables
keeps the counts in the same transaction as each insert, update and delete of items,
one aggregate per statement (not per row), so they are exact by construction whatever
writes the items. SQLite counts its covering index quickly and does without (a row
trigger there would cost more than it saves).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION lanewise_count_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO run_item_counts (run_id, status, n)
      SELECT run_id, status, count(*) FROM new_items GROUP BY run_id, status
      ORDER BY run_id, status
      ON CONFLICT (run_id, status) DO UPDATE SET n = run_item_counts.n + excluded.n;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO run_item_counts (run_id, status, n)
      SELECT run_id, status, -count(*) FROM old_items GROUP BY run_id, status
      ORDER BY run_id, status
      ON CONFLICT (run_id, status) DO UPDATE SET n = run_item_counts.n + excluded.n;
  ELSE
    INSERT INTO run_item_counts (run_id, status, n)
      SELECT run_id, status, sum(d) FROM (
          SELECT run_id, status, 1 AS d FROM new_items
          UNION ALL SELECT run_id, status, -1 AS d FROM old_items) AS changes
      GROUP BY run_id, status HAVING sum(d) <> 0
      ORDER BY run_id, status
      ON CONFLICT (run_id, status) DO UPDATE SET n = run_item_counts.n + excluded.n;
  END IF;
  RETURN NULL;
END $$
"""
TRIGGERS = {
    "items_count_insert": "AFTER INSERT ON items REFERENCING NEW TABLE AS new_items",
    "items_count_update": "AFTER UPDATE ON items "
                          "REFERENCING OLD TABLE AS old_items NEW TABLE AS new_items",
    "items_count_delete": "AFTER DELETE ON items REFERENCING OLD TABLE AS old_items",
}


def upgrade() -> None:
    """On PostgreSQL: the table, the trigger function and triggers, then the counts of
    the items already there (the triggers lock items first, so none is missed)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_table(
        "run_item_counts",
        sa.Column("run_id", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(20), primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    op.execute(FUNCTION)
    for name, when in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT "
                   "EXECUTE FUNCTION lanewise_count_items()")
    op.execute("INSERT INTO run_item_counts (run_id, status, n) "
               "SELECT run_id, status, count(*) FROM items GROUP BY run_id, status")


def downgrade() -> None:
    """Drop the triggers, the function and the table."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON items")
    op.execute("DROP FUNCTION IF EXISTS lanewise_count_items()")
    op.drop_table("run_item_counts")

"""The ledger's tables (SQLAlchemy Core); migrations in `migrations/` create them.

States:

* run:   planning -> running -> finished
* shard: planned -> submitting (intent recorded) -> submitted (batch id recorded)
         -> ended (provider done) -> collected;  or failed (whole batch failed)
* item:  rejected (bad input row, terminal) | queued (in a shard file)
         -> submitted -> succeeded | invalid_output | failed (terminal)
         or -> retry (retryable failure, budget left) -> queued in a follow-up shard
         | cached (answered from the result cache at planning: terminal, never sent,
           zero cost, `cached_from` names the original answer)
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_key", sa.String(200), nullable=False, unique=True),
    # Random per run; part of every custom_id, so one run's requests are told apart
    # from another run's over the same keys.
    sa.Column("token", sa.String(12), nullable=False),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("provider", sa.String(20), nullable=False),
    sa.Column("model", sa.String(100), nullable=False),
    sa.Column("input_url", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("results_url", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    # 0007: the lane, the date window (ISO dates, NULL = every row) and the Prefect flow
    # run that drove the run last (for `lanewise runs` and its link).
    sa.Column("lane", sa.String(10), nullable=False, server_default="batch"),
    sa.Column("window_start", sa.String(10)),
    sa.Column("window_end", sa.String(10)),
    sa.Column("prefect_flow_run_id", sa.String(64)),
    # 0010: the offline cost estimate made before the run sent anything (upper bound:
    # every request at the task's max output tokens; expected: at its measured average
    # output), checked against the task's budget and reported against the billed cost.
    sa.Column("estimate_upper_picodollars", sa.BigInteger),
    sa.Column("estimate_expected_picodollars", sa.BigInteger),
)

shards = sa.Table(
    "shards", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
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

items = sa.Table(
    "items", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("row_number", sa.Integer, nullable=False),
    sa.Column("input_key", sa.Text),
    # The key again, only for accepted rows: a unique index on it rejects duplicates
    # while rejected rows (NULL here) never collide.
    sa.Column("dedup_key", sa.Text),
    sa.Column("custom_id", sa.String(80)),
    sa.Column("shard_id", sa.Integer, sa.ForeignKey("shards.id")),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("excerpted", sa.Boolean, nullable=False, default=False),
    sa.Column("error_field", sa.String(100)),
    sa.Column("error_reason", sa.Text),
    sa.Column("output_text", sa.Text),
    sa.Column("input_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cached_input_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cache_write_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("output_tokens", sa.Integer, nullable=False, default=0),
    # 1-hour cache writes (priced apart from the 5-minute ones in cache_write_tokens) and
    # reasoning tokens (already inside output_tokens, kept apart to be shown): 0004.
    sa.Column("cache_write_1h_tokens", sa.Integer, nullable=False, default=0,
              server_default="0"),
    sa.Column("reasoning_tokens", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("cost_picodollars", sa.BigInteger, nullable=False, default=0),
    sa.Column("live_cost_picodollars", sa.BigInteger, nullable=False, default=0),
    # 0008: the request's content hash (provider, model, parameters, messages, schema),
    # the result cache's key; and, for an item answered from the cache (status
    # `cached`, zero cost), where that answer came from ("live:<id>", "item:<id>").
    sa.Column("content_hash", sa.String(64)),
    sa.Column("cached_from", sa.String(100)),
    # 0009: for a `cached` item, what sending it again would have cost at batch price
    # (the original answer's usage at the batch rates): the run summary's cache saving.
    sa.Column("cache_saving_picodollars", sa.BigInteger, nullable=False, default=0,
              server_default="0"),
    sa.UniqueConstraint("run_id", "row_number", name="uq_items_run_row"),
    sa.UniqueConstraint("run_id", "dedup_key", name="uq_items_run_key"),
    sa.Index("ix_items_run_custom_id", "run_id", "custom_id"),
    sa.Index("ix_items_run_status", "run_id", "status"),
    sa.Index("ix_items_shard", "shard_id"),
)

# Who drives a run key now. A process takes the lease before planning or submitting
# and renews it while it works; another process on the same key is refused (or waits)
# until the lease is released, lapses, or its holder is seen dead on the same host.
run_leases = sa.Table(
    "run_leases", metadata,
    sa.Column("run_key", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),  # host:pid:start:token
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

# Limits a provider stated (a refusal naming its enqueued-token limit, say), per
# provider and model, so later runs plan within them: 0005.
provider_limits = sa.Table(
    "provider_limits", metadata,
    sa.Column("provider", sa.String(20), primary_key=True),
    sa.Column("model", sa.String(100), primary_key=True),
    sa.Column("name", sa.String(50), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("learned_at", sa.Float, nullable=False),
)

# Items per run and state, kept exact by statement-level triggers on items (PostgreSQL
# only; SQLite counts items directly): 0006.
run_item_counts = sa.Table(
    "run_item_counts", metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(20), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
)

_USAGE = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "cache_write_1h_tokens",
          "output_tokens", "reasoning_tokens")

# One row per live call (0008): which path answered it (`answered_by`: live, fallback
# model, cache, deferred), its outcome, latency, attempts, usage and cost, and the
# caller's context (JSON). Written once, after the call: see lanewise/live.
live_calls = sa.Table(
    "live_calls", metadata,
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
    *(sa.Column(name, sa.Integer, nullable=False, server_default="0") for name in _USAGE),
    sa.Column("cost_picodollars", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cached_from", sa.String(100)),
    sa.Column("queue_item_id", sa.Integer),
    sa.Column("created_at", sa.Float, nullable=False),
    # 0010: the input row the call answered (JSON), for `lanewise whatif --sample`.
    sa.Column("request_row", sa.Text),
    sa.Index("ix_live_calls_task_created", "task", "created_at"),
    sa.Index("ix_live_calls_hash", "content_hash"),
)

# Succeeded answers by request content hash, shared by both lanes (0008): the live lane
# answers from it, the batch planner skips what it holds. `source` points at the
# original ("live:<id>" or "item:<id>"); its cost is what the original paid.
result_cache = sa.Table(
    "result_cache", metadata,
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

# Deferred work (0008), idempotent by (task, key):
#   queued -> claimed (run_key set: the drain run that will carry it, one transaction)
#          -> succeeded | invalid_output | failed (copied from that run's item)
# A claimed item belongs to exactly one run key; a crashed drain's run key is resumed,
# never a second one made for the same items.
queue_items = sa.Table(
    "queue_items", metadata,
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

TERMINAL_ITEM_STATES = ("rejected", "succeeded", "invalid_output", "failed", "cached")

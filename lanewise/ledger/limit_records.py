"""The ledger's `provider_limits` rows: limits a provider stated, learned per model.

Part of `Ledger` (mixed in). A provider that refuses a batch for a limit it names
(OpenAI's enqueued-token limit, say) teaches that figure; later runs plan within it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import sqlalchemy as sa

from lanewise.ledger.lease_records import dialect_insert
from lanewise.ledger.schema import provider_limits


class LimitRecords:
    """Learned provider limits; needs the ledger's `engine`, `dialect` and `_write`."""

    engine: sa.Engine
    dialect: str
    _write: Callable[[], AbstractContextManager[sa.Connection]]

    def learned_limit(self, provider: str, model: str, name: str, *,
                      max_age_seconds: float | None = None) -> int | None:
        """The limit `name` last learned for (provider, model), or None when none was
        (or, with `max_age_seconds`, when it was learned longer ago than that)."""
        query = sa.select(provider_limits.c.value).where(
            provider_limits.c.provider == provider, provider_limits.c.model == model,
            provider_limits.c.name == name)
        if max_age_seconds is not None:
            query = query.where(provider_limits.c.learned_at >= time.time() - max_age_seconds)
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar_one_or_none()
        return int(value) if value is not None else None

    def learn_limit(self, provider: str, model: str, name: str, value: int) -> None:
        """Record (or replace) the limit `name` of (provider, model), learned now."""
        now = time.time()
        statement = dialect_insert(self.dialect, provider_limits).values(
            provider=provider, model=model, name=name, value=int(value), learned_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=[provider_limits.c.provider, provider_limits.c.model,
                            provider_limits.c.name],
            set_={"value": statement.excluded.value, "learned_at": statement.excluded.learned_at})
        with self._write() as conn:
            conn.execute(statement)

"""The ledger's `run_leases` rows: who drives a run key, until when.

Part of `Ledger` (mixed in); the process side of a lease (heartbeat, fencing checks)
is `lanewise.ledger.lease.RunLease`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from lanewise.ledger.schema import run_leases


def dialect_insert(dialect: str, table: sa.Table):
    """An INSERT that supports ON CONFLICT for this dialect."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


class LeaseRecords:
    """Lease reads and writes; needs the ledger's `engine`, `dialect` and `_write`."""

    engine: sa.Engine
    dialect: str
    _write: Callable[[], AbstractContextManager[sa.Connection]]

    def try_lease(self, run_key: str, holder: str, host: str, pid: int, ttl: float,
                  holder_is_dead) -> dict[str, Any] | None:
        """Take the run key's lease for `holder`; returns None on success, or the
        current lease when someone else holds it (alive and unexpired).

        `holder_is_dead(lease)` says whether a lease's holder is known to be gone
        (same host, process no longer running), so a killed run's lease is taken over
        at once instead of after it lapses.
        """
        now = time.time()
        with self._write() as conn:
            lease = conn.execute(sa.select(run_leases).where(
                run_leases.c.run_key == run_key)).mappings().first()
            values = {"holder": holder, "host": host, "pid": pid, "acquired_at": now,
                      "expires_at": now + ttl}
            if lease is None:
                conn.execute(dialect_insert(self.dialect, run_leases).values(
                    run_key=run_key, **values).on_conflict_do_nothing())
                taken = conn.execute(sa.select(run_leases.c.holder).where(
                    run_leases.c.run_key == run_key)).scalar_one()
                if taken == holder:
                    return None
                lease = conn.execute(sa.select(run_leases).where(
                    run_leases.c.run_key == run_key)).mappings().one()
                return dict(lease)
            if lease["holder"] != holder and lease["expires_at"] > now and \
                    not holder_is_dead(dict(lease)):
                return dict(lease)
            # Compare-and-set on the holder we saw: a third process taking it over in
            # between makes this a no-op, and we report it as busy.
            result = conn.execute(run_leases.update().where(
                run_leases.c.run_key == run_key,
                run_leases.c.holder == lease["holder"]).values(**values))
            if result.rowcount != 1:
                now_held = conn.execute(sa.select(run_leases).where(
                    run_leases.c.run_key == run_key)).mappings().first()
                # Released in between: busy for this attempt, free for the next one.
                return dict(now_held) if now_held else {**lease, "expires_at": now}
        return None

    def renew_lease(self, run_key: str, holder: str, ttl: float) -> bool:
        """Extend `holder`'s lease; False when it is no longer theirs."""
        with self._write() as conn:
            result = conn.execute(run_leases.update().where(
                run_leases.c.run_key == run_key, run_leases.c.holder == holder,
            ).values(expires_at=time.time() + ttl))
            return result.rowcount == 1

    def release_lease(self, run_key: str, holder: str) -> None:
        """Give up `holder`'s lease (no-op when it is not theirs)."""
        with self._write() as conn:
            conn.execute(run_leases.delete().where(run_leases.c.run_key == run_key,
                                                   run_leases.c.holder == holder))

    def lease(self, run_key: str) -> dict[str, Any] | None:
        """The run key's current lease row, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(run_leases).where(
                run_leases.c.run_key == run_key)).mappings().first()
        return dict(row) if row else None

"""Planning a run while Prefect gets ready: the CLI's head start.

`lanewise run` without a configured server waits seconds for a temporary Prefect server
(and then for the flow engine) before the flow's first task can plan anything. Planning
needs neither, so the CLI takes the run key's lease at once and plans in a thread
meanwhile; the flow's plan step then finds the plan done (or its error) instead of
doing it again, and the runner keeps the same lease, so no other process can slip in
between the head start and the flow.

Everything stays in this process: the registry is per process and per run key, and a
head start nobody claims is released by `PlanAhead.close`.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from lanewise.ledger.lease import RunLease

if TYPE_CHECKING:
    from lanewise.batch.context import DateWindow, LaneContext

_lock = threading.Lock()
_started: dict[str, PlanAhead] = {}


class PlanAhead:
    """One run key planned in a background thread under a lease this process holds."""

    def __init__(self, ctx: LaneContext, run_key: str, input_url: str,
                 window: DateWindow | None) -> None:
        self.run_key = run_key
        self.input_url = input_url
        self.window = window
        self.lease = RunLease(ctx.ledger, run_key, ttl=ctx.settings.lease_seconds,
                              wait_seconds=ctx.settings.lease_wait_seconds)
        self.result: Future[int] = Future()
        self.claimed = False  # the runner took the lease over
        self.consumed = False  # the plan step took the result
        self._ctx = ctx

    def start(self) -> PlanAhead:
        """Take the lease (RunBusyError at once if another process drives the run key:
        nothing was touched), then plan in a thread."""
        self.lease.acquire()
        with _lock:
            _started[self.run_key] = self
        threading.Thread(target=self._plan, daemon=True, name=f"plan-{self.run_key}").start()
        return self

    def _plan(self) -> None:
        from lanewise.batch.planning import plan_run_now

        try:
            self.result.set_result(plan_run_now(self._ctx, self.run_key, self.input_url,
                                                self.window))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever claims the plan
            self.result.set_exception(exc)

    def close(self) -> None:
        """Release the lease unless the runner took it over; wait for the thread, so
        nothing plans after the command ends."""
        with _lock:
            _started.pop(self.run_key, None)
        try:
            self.result.exception()
        finally:
            if not self.claimed:
                self.lease.release()

    def __enter__(self) -> PlanAhead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def take_lease(run_key: str) -> RunLease | None:
    """The lease of a head start on this run key, handed to the runner (which then
    releases it); None when there is none."""
    with _lock:
        ahead = _started.get(run_key)
        if ahead is None or ahead.claimed:
            return None
        ahead.claimed = True
        return ahead.lease


def planned_run(run_key: str, input_url: str, window: DateWindow | None) -> int | None:
    """The run id a head start planned for exactly this run, waiting for it to finish
    (re-raising its error); None when there is no head start for it."""
    with _lock:
        ahead = _started.get(run_key)
        if (ahead is None or ahead.consumed or ahead.input_url != input_url
                or ahead.window != window):
            return None
        # Once only: a retried plan step plans for itself (resuming what this one did).
        ahead.consumed = True
    return ahead.result.result()

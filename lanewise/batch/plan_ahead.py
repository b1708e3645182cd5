"""Planning a run while Prefect gets ready: the CLI's head start.

`lanewise run` spends seconds before the flow's first task can plan anything: importing
Prefect and starting the flow engine, and without a configured server, starting a
temporary Prefect server. Planning needs none of them, so the CLI takes the run key's
lease at once and plans in a thread; the flow's plan step then finds the plan done (or
its error) instead of doing it again, and the runner keeps the same lease, so no other
process can slip in between the head start and the flow.

Once planned, the head start also sends the first wave: the run passes its budget
check (`lanewise.budgets.check_run`, as the runner would) and the shards that fit the
enqueued-token budget together are submitted by the batch lane's own step
(`steps.submit_shard`: intent, create, record, under this lease), so the provider works
while the server starts. The flow's runner then finds those shards submitted, as a
resumed run's, and awaits and collects them; their submits have no Prefect task run of
their own, but their log records ("created batch ...") are replayed into the flow run's
logs. Anything that stops the wave (a refused budget, an account out of credit) leaves
the shards as the runner expects them, and the runner meets the same stop in the flow.
After a wave without a stop, the head start goes on driving the run as the runner
would (await, collect, send what fits: `_drive`) until the flow's plan step takes it
over (`hand_over`, which stops it in a wait between two polls, never inside a step).

A task with no budget has nothing that could refuse its whole run
(`lanewise.budgets.may_send_while_planning`), so it need not wait for the whole plan:
each shard is sent as soon as planning records it, while the rest of the input is still
planned (`ShardSender`, in a thread of its own, by the same pipeline rule), and the
run's estimate is recorded once planning ends. A crash then leaves a run in `planning`
with batches created; its rerun keeps those shards and plans the rest around them
(`planning._resume_planning`).

Everything stays in this process: the registry is per process and per run key, and a
head start nobody claims is released by `PlanAhead.close`.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

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
        # The account out of credit, met by the first wave: the flow stops with it
        # rather than asking the provider again (`planned_run` raises it).
        self.out_of_credit: Exception | None = None
        # Planning's own context, with its log held back: no Prefect run exists yet, so
        # the plan step replays these records into the flow run's logs.
        self.held_log = HeldLog()
        self._ctx = dataclasses.replace(ctx, log=self.held_log)
        self._thread: threading.Thread | None = None
        self._handover = threading.Event()  # the flow took the run over: stop driving
        self.spent_before = 0

    def start(self) -> PlanAhead:
        """Take the lease (RunBusyError at once if another process drives the run key:
        nothing was touched), then plan in a thread."""
        self.lease.acquire()
        # What the run had cost before this command: its flow's summary says what this
        # attempt spent, and by the time the flow starts, the head start may have
        # collected batches already.
        run = self._ctx.ledger.run_by_key(self.run_key)
        self.spent_before = 0 if run is None else \
            self._ctx.ledger.totals(run["id"])["cost_picodollars"]
        with _lock:
            _started[self.run_key] = self
        self._thread = threading.Thread(target=self._plan, daemon=True,
                                        name=f"plan-{self.run_key}")
        self._thread.start()
        return self

    def _plan(self) -> None:
        from lanewise.batch.planning import plan_run_now
        from lanewise.budgets import may_send_while_planning
        from lanewise.errors import QuotaExhaustedError

        ctx = dataclasses.replace(self._ctx, lease=self.lease)
        sender = ShardSender(ctx) if may_send_while_planning(ctx.task) else None
        try:
            try:
                run_id = plan_run_now(self._ctx, self.run_key, self.input_url, self.window,
                                      outlet=sender)
            finally:
                if sender is not None:
                    sender.finish()  # what planning queued is sent, or the sending stopped
        except BaseException as exc:  # noqa: BLE001 - handed to whoever claims the plan
            self.result.set_exception(exc)
            return
        drive = False
        try:
            if sender is not None and isinstance(sender.stopped, QuotaExhaustedError):
                self.out_of_credit = sender.stopped
            else:
                if sender is not None and sender.stopped is not None:
                    self.held_log.info("the head start stopped sending while it planned "
                                       "(%s)", sender.stopped)
                # The budget check, or for a run that sent while it planned, its estimate
                # (`check_run`), then what fits now.
                drive = self._send_first_wave(ctx, run_id)
            if drive:
                self._warm_collect_imports()
        finally:
            self.result.set_result(run_id)  # the flow waits on it, whatever the wave did
        if drive and not self._handover.is_set():
            self._drive(run_id)

    def wait(self) -> None:
        """Block until the head start's plan is over: planned and its first wave sent
        (or stopped); its outcome is the flow's to see. The CLI imports Prefect and
        starts the flow only then: planning is CPU work in this process and so are
        those, so done together they delayed the first batch; done after, they overlap
        the provider's work on it. (Nor do two threads import at once: a module one
        thread is importing can look half-made to the other. What the head start goes
        on doing meanwhile, `_drive`, imports nothing new.)"""
        self.result.exception()

    def _send_first_wave(self, ctx: LaneContext, run_id: int) -> bool:
        """Send what fits the enqueued-token budget now (the runner's own rule:
        `Pipeline.send_what_fits`, batches already in flight counted), once the run
        passes its budget check; a stop is logged and left to the runner, which meets it
        again in the flow (an account out of credit is handed over instead, so the
        provider is asked once). True when the wave went without a stop."""
        from lanewise.batch.runner import LocalSteps, Pipeline, uncollected_shards
        from lanewise.budgets import check_run
        from lanewise.errors import QuotaExhaustedError

        try:
            check_run(ctx, run_id)
            pipeline = Pipeline(ctx, LocalSteps(ctx), run_id, self.lease.ensure)
            pipeline.load(uncollected_shards(ctx, run_id))
            pipeline.send_what_fits()
        except QuotaExhaustedError as exc:
            self.out_of_credit = exc
        except Exception as exc:  # noqa: BLE001 - the runner meets it again, in the flow
            self.held_log.info("the head start sent no more batches (%s); the run goes "
                               "on in its flow", exc)
        else:
            return True
        return False

    @staticmethod
    def _warm_collect_imports() -> None:
        """Import, in this thread and before the CLI imports Prefect in its own, what
        awaiting and collecting batches need (`_drive`), and httpx: the openai SDK (on
        httpx2) looks at `sys.modules["httpx"]` on every request, and met the module
        half made while Prefect was importing it ("partially initialized module 'httpx'
        has no attribute 'Response'": a bench run's driving stopped on it)."""
        from lanewise.batch.results import warm_results_imports

        warm_results_imports()
        try:
            import httpx  # noqa: F401 - imported whole before Prefect imports it
        except ImportError:
            pass

    def _drive(self, run_id: int) -> None:
        """Until the flow's plan step takes the run over (`hand_over`), go on as its
        runner would: await the batches in flight, collect each as it ends and send
        what then fits, so the provider is not left idle and no ended batch waits while
        Prefect starts. A step is never cut short: the hand-over comes only in a wait
        between polls, and the runner then finds every shard where its state puts it,
        as a resumed run's. Anything that stops this is logged; the runner goes on."""
        from lanewise.batch.runner import LocalSteps, Pipeline, uncollected_shards
        from lanewise.errors import QuotaExhaustedError

        ctx = dataclasses.replace(self._ctx, lease=self.lease, sleep=self._sleep)
        try:
            # The pipeline checks this fence before every collect and every await: the
            # flow's claim stops it there too, not only in a wait between polls.
            Pipeline(ctx, LocalSteps(ctx), run_id, self._fence).run(
                uncollected_shards(ctx, run_id))
        except _HandedOver:
            return
        except QuotaExhaustedError as exc:
            self.out_of_credit = exc  # the flow stops with it: the provider is asked once
        except Exception as exc:  # noqa: BLE001 - the runner meets it again, in the flow
            self.held_log.info("the head start stopped driving the run (%s); its flow "
                               "goes on", exc)

    def _sleep(self, seconds: float) -> None:
        if self._handover.wait(seconds):
            raise _HandedOver

    def _fence(self) -> None:
        if self._handover.is_set():
            raise _HandedOver
        self.lease.ensure()

    def hand_over(self) -> None:
        """Stop driving the run after the step under way (a collect, a submit or a
        poll), and wait for that."""
        self._handover.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def close(self) -> None:
        """Release the lease unless the runner took it over; wait for the thread, so
        nothing plans or drives the run after the command ends."""
        with _lock:
            _started.pop(self.run_key, None)
        try:
            self.wait()
            self.hand_over()
        finally:
            if not self.claimed:
                self.lease.release()

    def __enter__(self) -> PlanAhead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardSender:
    """Sends each shard the moment planning records it, from a thread of its own, so the
    provider works on the first batches while the rest of the input is planned.

    The same rule as the runner's (`Pipeline`: in order, while the enqueued-token budget
    has room) decides what goes; a shard that does not fit yet stays `planned` for the
    first wave or the runner. The first stop (an account out of credit, a refused
    create, a lost lease) ends the sending: what is left is the runner's, as usual.
    """

    def __init__(self, ctx: LaneContext) -> None:
        assert ctx.lease is not None, "sends under the head start's lease"
        self.ctx = ctx
        self.stopped: Exception | None = None
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pipeline: Any = None

    def shard_recorded(self, run_id: int, shard_id: int) -> None:
        """Planning recorded this shard: queue it for sending."""
        if self._thread is None:
            # Imported here, in the planning thread, before the sender starts: two
            # threads importing at once can see each other's modules half made.
            from lanewise.batch.runner import LocalSteps, Pipeline, uncollected_shards

            self._pipeline = Pipeline(self.ctx, LocalSteps(self.ctx), run_id,
                                      self.ctx.lease.ensure)
            # A resumed planning's kept shards count in flight (or are sent first, when
            # their create was interrupted), so the budget holds across the crash.
            self._pipeline.load([sid for sid in uncollected_shards(self.ctx, run_id)
                                 if sid != shard_id])
            self._thread = threading.Thread(target=self._send, daemon=True,
                                            name=f"send-{run_id}")
            self._thread.start()
        self._queue.put(shard_id)

    def _send(self) -> None:
        while (shard_id := self._queue.get()) is not None:
            if self.stopped is not None:
                continue
            try:
                self._pipeline.load([shard_id])
                self._pipeline.send_what_fits()
            except Exception as exc:  # noqa: BLE001 - the first wave or the runner goes on
                self.stopped = exc

    def abort(self) -> None:
        """Send nothing more (what is queued stays `planned`), and return once the send
        under way, if any, is over."""
        if self.stopped is None:
            self.stopped = _Aborted("planning failed")
        self.finish()

    def finish(self) -> None:
        """Wait until what was queued is sent (or the sending stopped)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()


class _Aborted(Exception):  # noqa: N818 - why a sender stopped, not raised
    """Why a `ShardSender` sent nothing more."""


class _HandedOver(BaseException):  # noqa: N818 - not an error: a signal to stop
    """The flow took the run over: the head start stops between two polls."""


def spent_before(run_key: str) -> int | None:
    """What the run had cost (picodollars) when this process's head start on it began;
    None when there is none."""
    with _lock:
        ahead = _started.get(run_key)
    return None if ahead is None else ahead.spent_before


def take_lease(run_key: str) -> RunLease | None:
    """The lease of a head start on this run key, handed to the runner (which then
    releases it); None when there is none."""
    with _lock:
        ahead = _started.get(run_key)
        if ahead is None or ahead.claimed:
            return None
        ahead.claimed = True
        return ahead.lease


class HeldLog:
    """A logger stand-in that keeps records to replay later (see `PlanAhead`)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str, tuple[Any, ...]]] = []

    def log(self, level: int, msg: str, *args: Any, **_: Any) -> None:
        """Keep one record."""
        self.records.append((level, msg, args))

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Keep a debug record."""
        self.log(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Keep an info record."""
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Keep a warning."""
        self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Keep an error."""
        self.log(logging.ERROR, msg, *args)

    def replay(self, target: Any) -> None:
        """Send the kept records to `target` (a logger), in order."""
        for level, msg, args in self.records:
            target.log(level, msg, *args)


def planned_run(run_key: str, input_url: str, window: DateWindow | None,
                log: Any = None) -> int | None:
    """The run id a head start planned for exactly this run, waiting for it to finish
    (re-raising its error) and replaying its log records into `log`; None when there is
    no head start for it."""
    with _lock:
        ahead = _started.get(run_key)
        if (ahead is None or ahead.consumed or ahead.input_url != input_url
                or ahead.window != window):
            return None
        # Once only: a retried plan step plans for itself (resuming what this one did).
        ahead.consumed = True
    ahead.wait()
    ahead.hand_over()  # the caller drives the run from here on
    if log is not None:
        ahead.held_log.replay(log)
    if ahead.out_of_credit is not None:
        raise ahead.out_of_credit
    return ahead.result.result()

"""The CLI's head start: planning while Prefect gets ready, under one lease handed to the
runner, never twice, with errors surfacing in the plan step."""

from __future__ import annotations

import pytest

from lanewise.batch import plan_ahead
from lanewise.batch.plan_ahead import PlanAhead
from lanewise.batch.planning import open_run
from lanewise.batch.runner import run_batch_lane
from lanewise.errors import ConfigurationError, InputError, RunBusyError
from lanewise.ledger.lease import RunLease
from tests.lane_helpers import batches_created, make_context, sample_input
from tests.test_batch_lane import check_run


def test_a_head_start_plans_once_and_the_runner_keeps_its_lease(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    input_url = sample_input(tmp_path)
    created_before = batches_created(emulator)
    planned = []
    original = plan_ahead.PlanAhead._plan

    def counting_plan(self):
        planned.append(self.run_key)
        original(self)

    plan_ahead.PlanAhead._plan = counting_plan
    try:
        with PlanAhead(ctx, "tagging:ahead", input_url, None) as ahead:
            run_id = ahead.result.result(timeout=60)
            # The head start sent the first wave already (under its lease): the provider
            # works while Prefect starts.
            first_wave = [s for s in ctx.ledger.shards(run_id) if s["status"] != "planned"]
            assert first_wave and all(s["provider_batch_id"] for s in first_wave)
            assert batches_created(emulator) - created_before == len(first_wave)
            # While the head start holds the lease, nobody else may drive the key.
            with pytest.raises(RunBusyError):
                RunLease(ctx.ledger, "tagging:ahead", ttl=30).acquire()
            summary = run_batch_lane(ctx, "tagging:ahead", input_url)
            assert ahead.claimed and ahead.consumed
    finally:
        plan_ahead.PlanAhead._plan = original
    assert planned == ["tagging:ahead"]
    # What planning said during the head start reached the runner's log (in a flow: the
    # flow run's Prefect logs) when the plan step took the result.
    assert any("shard(s) planned" in msg for _, msg, _ in ahead.held_log.records)
    check_run(ctx, emulator, summary)
    # The runner awaited the head start's batches as a resumed run's: none made twice.
    assert batches_created(emulator) - created_before == len(summary.batch_ids)
    assert {s["provider_batch_id"] for s in first_wave} <= set(summary.batch_ids)
    assert any("created batch" in msg for _, msg, _ in ahead.held_log.records)
    # The runner released the lease it was handed: another driver may take the key now.
    RunLease(ctx.ledger, "tagging:ahead", ttl=30).acquire().release()


def test_the_head_starts_log_is_replayed_into_the_plan_steps_log(emulator, tmp_path,
                                                                 caplog):
    import logging

    ctx = make_context("ticket-tagging", emulator, tmp_path)
    input_url = sample_input(tmp_path)
    with PlanAhead(ctx, "tagging:logged", input_url, None):
        with caplog.at_level(logging.INFO, logger="lanewise.batch"):
            open_run(ctx, "tagging:logged", input_url)
    assert any("shard(s) planned" in r.getMessage() and r.name == "lanewise.batch"
               for r in caplog.records)


def test_an_unclaimed_head_start_releases_its_lease(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    with PlanAhead(ctx, "tagging:unclaimed", sample_input(tmp_path), None) as ahead:
        run_id = ahead.result.result(timeout=60)
    assert ctx.ledger.run(run_id)["status"] == "running"
    RunLease(ctx.ledger, "tagging:unclaimed", ttl=30).acquire().release()
    # Another input or window than the head start's is planned by the step itself.
    assert plan_ahead.planned_run("tagging:unclaimed", "elsewhere", None) is None


def test_a_head_start_error_surfaces_in_the_plan_step(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    missing = str(tmp_path / "no-such-file.parquet")
    with PlanAhead(ctx, "tagging:broken", missing, None):
        with pytest.raises(InputError):
            open_run(ctx, "tagging:broken", missing)
        # Only once: a retried step plans for itself (and meets the same error afresh).
        with pytest.raises(InputError):
            open_run(ctx, "tagging:broken", missing)
    assert ctx.ledger.sent_shards(ctx.ledger.run_by_key("tagging:broken")["id"]) == 0


def test_a_second_process_is_refused_before_its_head_start_plans(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    with RunLease(ctx.ledger, "tagging:taken", ttl=30):
        with pytest.raises(RunBusyError):
            PlanAhead(ctx, "tagging:taken", sample_input(tmp_path), None).start()
    assert ctx.ledger.run_by_key("tagging:taken") is None


def test_a_head_start_over_budget_sends_nothing_and_the_runner_refuses(emulator, tmp_path):
    from lanewise.errors import BudgetExceededError
    from lanewise.settings import Settings
    from tests.test_budgets import catalog_with

    catalog = catalog_with(tmp_path, "tiny.yaml",
                           {"ticket-tagging": {"budget": {"run_ceiling_usd": "0.000001"}}})
    settings = Settings(home=tmp_path / "home", emulator_url=emulator.url,
                        catalog_path=catalog, poll_initial_seconds=0.05)
    from lanewise.batch.context import LaneContext
    from lanewise.ledger import Ledger

    ctx = LaneContext.build("ticket-tagging", settings,
                            ledger=Ledger(settings.resolved_database_url))
    input_url = sample_input(tmp_path)
    created_before = batches_created(emulator)
    with PlanAhead(ctx, "tagging:over", input_url, None) as ahead:
        run_id = ahead.result.result(timeout=60)
        assert all(s["status"] == "planned" for s in ctx.ledger.shards(run_id))
        with pytest.raises(BudgetExceededError, match="per-run ceiling"):
            run_batch_lane(ctx, "tagging:over", input_url)
    assert batches_created(emulator) == created_before  # nothing reached the provider
    assert any("sent no more batches" in msg for _, msg, _ in ahead.held_log.records)


def test_a_head_start_counts_batches_already_in_flight(emulator, tmp_path):
    """On a resumed run, the first wave leaves room for the batches already sent: the
    runner's own fit rule, not a fresh tally."""
    from lanewise.batch.context import LaneContext
    from lanewise.batch.steps import submit_shard
    from lanewise.ledger import Ledger
    from lanewise.settings import Settings

    settings = Settings(home=tmp_path / "home", emulator_url=emulator.url,
                        shard_max_requests=10, poll_initial_seconds=0.05)
    ctx = LaneContext.build("ticket-tagging", settings,
                            ledger=Ledger(settings.resolved_database_url))
    input_url = sample_input(tmp_path)
    run_id = open_run(ctx, "tagging:resumed", input_url)
    first, *rest = ctx.ledger.shards(run_id)
    assert rest
    submit_shard(ctx, first["id"])  # sent by an earlier, stopped driver
    # Room for the batch in flight and less than one more shard.
    ctx.token_budget = first["estimated_tokens"] + rest[0]["estimated_tokens"] - 1
    created_before = batches_created(emulator)
    with PlanAhead(ctx, "tagging:resumed", input_url, None) as ahead:
        assert ahead.result.result(timeout=60) == run_id
        assert all(s["status"] == "planned" for s in ctx.ledger.shards(run_id)[1:])
        assert batches_created(emulator) == created_before
        summary = run_batch_lane(ctx, "tagging:resumed", input_url)
    check_run(ctx, emulator, summary)


def test_an_account_out_of_credit_is_asked_once_and_the_run_stops_with_it(
        emulator, control, tmp_path):
    """The first wave meets the account out of credit: the runner stops with that error
    instead of sending the same shard again; topped up, a rerun resumes the run."""
    from lanewise.errors import QuotaExhaustedError
    from tests.test_quota_and_estimates import quota_refusals, set_out_of_credit

    ctx = make_context("ticket-tagging", emulator, tmp_path)
    input_url = sample_input(tmp_path)
    refused_before = quota_refusals(emulator)
    set_out_of_credit(control, "openai", True)
    try:
        with PlanAhead(ctx, "tagging:broke", input_url, None) as ahead:
            ahead.wait()
            with pytest.raises(QuotaExhaustedError, match="tagging:broke"):
                run_batch_lane(ctx, "tagging:broke", input_url)
    finally:
        set_out_of_credit(control, "openai", False)
    assert quota_refusals(emulator) - refused_before == 1
    summary = run_batch_lane(ctx, "tagging:broke", input_url)
    assert summary.succeeded > 0 and "failed" not in summary.counts
    assert summary.succeeded + summary.counts.get("rejected", 0) == summary.rows


def _budget_free_context(emulator, tmp_path, ledger_url=None, **fields):
    """ticket-tagging with no budget (so its head start sends while it plans), 10
    requests a shard, on the test emulator."""
    from lanewise.batch.context import LaneContext
    from lanewise.ledger import Ledger
    from lanewise.settings import Settings
    from tests.test_budgets import catalog_with

    settings = Settings(home=tmp_path / "home", emulator_url=emulator.url,
                        database_url=ledger_url,
                        catalog_path=catalog_with(tmp_path, "free.yaml", {}),
                        shard_max_requests=10, poll_initial_seconds=0.05,
                        poll_max_seconds=0.2)
    return LaneContext.build("ticket-tagging", settings,
                             ledger=Ledger(settings.resolved_database_url), **fields)


def _sent(ctx, run_key):
    run = ctx.ledger.run_by_key(run_key)
    return [] if run is None else [s for s in ctx.ledger.shards(run["id"])
                                   if s["provider_batch_id"]]


def _wait_for_batches(ctx, run_key, count, timeout=30.0):
    """Block (the planning thread, from its hook) until `count` batches were created."""
    import time

    deadline = time.monotonic() + timeout
    while len(_sent(ctx, run_key)) < count:
        assert time.monotonic() < deadline, f"no {count} batch(es) sent while planning"
        time.sleep(0.02)


def test_a_task_without_a_budget_sends_its_shards_while_it_plans(emulator, tmp_path):
    """Nothing could refuse the whole run, so each shard goes as soon as it is recorded;
    the estimate is recorded once planning ends, and the run ends like any other."""
    seen_while_planning = []

    def hook(point):
        if point == "mid_plan" and not seen_while_planning:
            # Planning is held here, after its first shard: that shard's batch gets
            # created all the same.
            _wait_for_batches(ctx, "tagging:streamed", 1)
            seen_while_planning.append(ctx.ledger.run_by_key("tagging:streamed")["status"])

    ctx = _budget_free_context(emulator, tmp_path, crash_hook=hook)
    input_url = sample_input(tmp_path)
    created_before = batches_created(emulator)
    with PlanAhead(ctx, "tagging:streamed", input_url, None) as ahead:
        run_id = ahead.result.result(timeout=60)
        summary = run_batch_lane(ctx, "tagging:streamed", input_url)
    assert seen_while_planning == ["planning"]
    run = ctx.ledger.run(run_id)
    assert run["estimate_upper_picodollars"] > 0 and run["estimate_expected_picodollars"] > 0
    check_run(ctx, emulator, summary)
    shards = ctx.ledger.shards(run_id)
    assert len(shards) == 6 and batches_created(emulator) - created_before == len(shards)


def _crash_mid_planning(ctx, run_key, input_url, sent=2):
    """Plan `run_key` with a head start that is killed (planning's thread) at the third
    shard, once `sent` batches were created while it planned."""
    from tests.lane_helpers import SimulatedCrash

    reached = {"n": 0}

    def hook(point):
        if point == "mid_plan":
            reached["n"] += 1
            if reached["n"] == 3:
                _wait_for_batches(ctx, run_key, sent)
                raise SimulatedCrash(point)

    ctx.crash_hook = hook
    with PlanAhead(ctx, run_key, input_url, None) as ahead:
        with pytest.raises(SimulatedCrash):
            ahead.result.result(timeout=60)
    ctx.crash_hook = lambda point: None
    assert ctx.ledger.run_by_key(run_key)["status"] == "planning"
    return {s["shard_key"]: s["provider_batch_id"] for s in _sent(ctx, run_key)}


def test_a_crash_mid_planning_keeps_the_batches_sent_and_plans_the_rest(
        emulator, tmp_path, ledger_url, monkeypatch):
    """Killed while planning, after batches were created for its first shards: the rerun
    (a head start again) keeps those shards (reattached, not sent again), forgets the
    rest of the plan, skips the rows those shards hold, and ends with every row exactly
    once, paid once. Chunks of 7 rows: the duplicate of row 1 (row 58) is found in the
    ledger, not within its chunk."""
    from lanewise.batch import planning

    monkeypatch.setattr(planning, "PLAN_CHUNK", 7)
    ctx = _budget_free_context(emulator, tmp_path, ledger_url)
    input_url = sample_input(tmp_path)
    created_before = batches_created(emulator)
    kept = _crash_mid_planning(ctx, "tagging:killed", input_url)
    assert len(kept) >= 2
    created_by_crash = batches_created(emulator) - created_before
    with PlanAhead(ctx, "tagging:killed", input_url, None) as ahead:
        ahead.wait()
        summary = run_batch_lane(ctx, "tagging:killed", input_url)
    assert any("sent while it planned are kept" in msg for _, msg, _ in ahead.held_log.records)
    check_run(ctx, emulator, summary)
    assert "row 58, field 'ticket_id': duplicate key (first at row 1)" in {
        r for _, r, _ in summary.reasons}
    run = ctx.ledger.run_by_key("tagging:killed")
    assert run["estimate_upper_picodollars"] > 0
    shards = ctx.ledger.shards(run["id"])
    # The kept shards kept their batches; every other shard got exactly one.
    assert {s["shard_key"]: s["provider_batch_id"] for s in shards
            if s["shard_key"] in kept} == kept
    assert len({s["shard_key"] for s in shards}) == len(shards) == 6
    assert batches_created(emulator) - created_before == len(shards)
    assert created_by_crash == len(kept)


def test_an_input_changed_under_batches_sent_while_planning_stops_the_resume(
        emulator, tmp_path):
    """The rows of kept shards must still be there as they were sent: a file rewritten
    in place stops the rerun with the row and both keys, and touches nothing."""
    import pandas as pd

    ctx = _budget_free_context(emulator, tmp_path)
    input_url = sample_input(tmp_path)
    kept = _crash_mid_planning(ctx, "tagging:changed", input_url)
    frame = pd.read_parquet(input_url)
    frame.loc[0, "ticket_id"] = "T-REPLACED"
    frame.to_parquet(input_url)
    created = batches_created(emulator)
    with pytest.raises(ConfigurationError, match="row 1 held key .* now holds key 'T-REPLACED'"):
        run_batch_lane(ctx, "tagging:changed", input_url)
    assert batches_created(emulator) == created
    assert {s["shard_key"]: s["provider_batch_id"]
            for s in _sent(ctx, "tagging:changed")} == kept


def test_the_head_start_collects_what_ends_before_the_flow_takes_over(emulator, tmp_path):
    """Until the plan step claims the run, the head start awaits and collects its batches
    (and sends what then fits), so nothing ended waits for Prefect's start; the runner
    then finds them collected and only finishes the run."""
    ctx = _budget_free_context(emulator, tmp_path)
    input_url = sample_input(tmp_path)
    created_before = batches_created(emulator)
    with PlanAhead(ctx, "tagging:driven", input_url, None) as ahead:
        run_id = ahead.result.result(timeout=60)
        ahead._thread.join(timeout=60)  # nothing claims the run: it drives to the end
        assert not ahead._thread.is_alive()
        assert {s["status"] for s in ctx.ledger.shards(run_id)} == {"collected"}
        summary = run_batch_lane(ctx, "tagging:driven", input_url)
    check_run(ctx, emulator, summary)
    assert batches_created(emulator) - created_before == len(ctx.ledger.shards(run_id))
    assert any("collected shard" in msg for _, msg, _ in ahead.held_log.records)


def test_the_flow_takes_a_driven_run_over_between_two_polls(emulator, tmp_path):
    """Batches still running when the plan step claims the run: the head start stops in
    its wait between polls (it does not wait for them), and the runner awaits the same
    batches: none created twice, every row once, the cost equal to the bill."""
    import time

    ctx = _budget_free_context(emulator, tmp_path)
    input_url = sample_input(tmp_path)
    timing = emulator.state.config.timing
    was = timing.batch_seconds
    timing.batch_seconds = 3.0
    created_before = batches_created(emulator)
    try:
        with PlanAhead(ctx, "tagging:handed", input_url, None) as ahead:
            run_id = ahead.result.result(timeout=60)
            time.sleep(0.3)  # the head start is now waiting for its batches
            assert ahead._thread.is_alive()  # planned, and driving the run
            started = time.monotonic()
            assert open_run(ctx, "tagging:handed", input_url) == run_id
            assert time.monotonic() - started < 2.0  # not held until a batch ended
            assert not ahead._thread.is_alive()
            in_flight = [s for s in ctx.ledger.shards(run_id) if s["status"] == "submitted"]
            assert in_flight
            summary = run_batch_lane(ctx, "tagging:handed", input_url)
    finally:
        timing.batch_seconds = was
    check_run(ctx, emulator, summary)
    assert batches_created(emulator) - created_before == len(ctx.ledger.shards(run_id))

"""lanewise as a careful client: an account out of credit stops the run (never retried,
nothing failed, a rerun resumes), and token estimates count what the providers bill
beyond the prompt (Anthropic's tool-use system prompt, reasoning tokens)."""

from __future__ import annotations

import pickle
import sys

import pytest

from lanewise.batch.runner import run_batch_lane
from lanewise.catalog import load_catalog
from lanewise.errors import (
    PermanentProviderError,
    QuotaExhaustedError,
    TransientProviderError,
)
from lanewise.providers.anthropic_adapter import AnthropicAdapter
from lanewise.providers.openai_adapter import OpenAIAdapter
from lanewise.providers.sdk_errors import is_quota_error
from lanewise.requests import estimate_output_tokens, estimate_tokens, estimated_usage
from lanewise.settings import get_settings
from lanewise.tokens import (
    TOOL_USE_SYSTEM_TOKENS_UNKNOWN,
    count_prompt_tokens,
    is_reasoning_model,
    schema_tokens,
    tool_use_system_tokens,
)
from tests.lane_helpers import billed_for, make_context, sample_input

QUOTA_SWITCH = {"openai": "openai_insufficient_quota",
                "anthropic": "anthropic_insufficient_quota"}
TASK_OF = {"openai": "ticket-tagging", "anthropic": "ticket-summary"}


def quota_message(provider: str, run_key: str) -> str:
    return (f"the {provider} account is out of credit (insufficient_quota): top up, then "
            f"rerun {run_key} to resume; nothing was marked failed")


def set_out_of_credit(control, provider: str, on: bool) -> None:
    response = control.patch("/faults", json={QUOTA_SWITCH[provider]: on})
    assert response.status_code == 200, response.text
    assert response.json()[QUOTA_SWITCH[provider]] is on


def quota_refusals(emulator) -> int:
    return emulator.state.snapshot().get("quota_refusals", 0)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_out_of_credit_stops_the_run_and_a_rerun_resumes(provider, emulator, control,
                                                          tmp_path):
    ctx = make_context(TASK_OF[provider], emulator, tmp_path)
    run_key = f"{TASK_OF[provider]}:quota"
    path = sample_input(tmp_path, rows=30)
    set_out_of_credit(control, provider, True)
    refused_before = quota_refusals(emulator)
    try:
        with pytest.raises(QuotaExhaustedError) as caught:
            run_batch_lane(ctx, run_key, path)
    finally:
        set_out_of_credit(control, provider, False)
    assert str(caught.value) == quota_message(provider, run_key)
    # One refused call: the SDK did not retry it (OpenAI's is a 429), nor did lanewise.
    assert quota_refusals(emulator) - refused_before == 1
    run = ctx.ledger.run_by_key(run_key)
    assert run["status"] == "running"
    assert "failed" not in ctx.ledger.count_items(run["id"])
    shards = ctx.ledger.shards(run["id"])
    assert shards and {s["status"] for s in shards} == {"planned"}
    assert all(s["provider_batch_id"] is None for s in shards)

    summary = run_batch_lane(ctx, run_key, path)  # topped up: the rerun resumes
    counts = ctx.ledger.count_items(run["id"])
    assert "failed" not in counts and counts.get("succeeded", 0) > 0
    assert summary.cost_usd == billed_for(emulator, summary.batch_ids) > 0


def test_an_out_of_credit_call_is_translated_once_and_never_retried(emulator, control):
    from lanewise.providers import get_adapter
    from lanewise.settings import Settings

    adapter = get_adapter("openai", Settings(emulator_url=emulator.url))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello."}]}
    set_out_of_credit(control, "openai", True)
    refused_before = quota_refusals(emulator)
    try:
        with pytest.raises(QuotaExhaustedError) as caught:
            adapter.live(body)
    finally:
        set_out_of_credit(control, "openai", False)
    assert quota_refusals(emulator) - refused_before == 1  # max_retries=3, used 0
    assert caught.value.status_code == 429 and "insufficient_quota" in str(caught.value)
    assert not isinstance(caught.value, (TransientProviderError, PermanentProviderError))
    assert adapter.live(body).ok


def test_quota_errors_are_recognised_in_each_provider_shape():
    assert is_quota_error("openai", 429, {"type": "insufficient_quota",
                                          "code": "insufficient_quota"})
    assert not is_quota_error("openai", 429, {"type": "requests", "code": None})
    credit = ("Your credit balance is too low to access the Anthropic API. Please go to "
              "Plans & Billing to upgrade or purchase credits.")
    assert is_quota_error("anthropic", 400, {"type": "invalid_request_error",
                                             "message": credit})
    assert is_quota_error("anthropic", 402, {"type": "billing_error", "message": "x"})
    assert not is_quota_error("anthropic", 400, {"type": "invalid_request_error",
                                                 "message": "max_tokens: too large"})


def test_a_quota_error_survives_pickling_with_its_run_key():
    error = QuotaExhaustedError("openai", detail="create batch: HTTP 429", status_code=429)
    named = error.for_run("ticket-tagging:2026-08-01")
    again = pickle.loads(pickle.dumps(named))
    assert isinstance(again, QuotaExhaustedError)
    assert str(again) == quota_message("openai", "ticket-tagging:2026-08-01")
    assert (again.provider, again.run_key, again.detail, again.status_code) == (
        "openai", "ticket-tagging:2026-08-01", "create batch: HTTP 429", 429)


def test_requests_refused_for_credit_inside_a_batch_are_retried_not_failed():
    openai_line = {"custom_id": "k--t-0", "response": {"status_code": 429, "body": {
        "error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                  "code": "insufficient_quota", "param": None}}}, "error": None}
    outcome = OpenAIAdapter._outcome(openai_line)
    assert outcome.retryable and outcome.error_kind == "insufficient_quota"
    errored = {"type": "errored", "error": {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "Your credit balance is too low to access the Anthropic API."}}}
    assert AnthropicAdapter._outcome("k--t-0", errored).retryable
    bad = {"type": "errored", "error": {"type": "error", "error": {
        "type": "invalid_request_error", "message": "messages: empty"}}}
    assert not AnthropicAdapter._outcome("k--t-0", bad).retryable


@pytest.mark.prefect
def test_the_flow_does_not_retry_and_the_cli_says_it_in_one_line(
        emulator, control, tmp_path, monkeypatch, capsys, prefect_harness):
    from lanewise import cli as cli_module
    from lanewise.batch.prefect_tasks import context_for
    from lanewise.cli import main

    monkeypatch.setattr(cli_module.error_console, "width", 400)  # no wrapping in capture
    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LANEWISE_EMULATOR_URL", emulator.url)
    monkeypatch.setenv("LANEWISE_POLL_INITIAL_SECONDS", "0.05")
    monkeypatch.setenv("LANEWISE_POLL_MAX_SECONDS", "0.2")
    get_settings.cache_clear()
    context_for.cache_clear()
    argv = ["lanewise", "run", "ticket-tagging", "--input", sample_input(tmp_path, rows=30),
            "--all-rows", "--run-key", "tagging:quota-cli"]
    monkeypatch.setattr(sys, "argv", argv)
    set_out_of_credit(control, "openai", True)
    refused_before = quota_refusals(emulator)
    try:
        with pytest.raises(SystemExit) as stopped:
            main()
    finally:
        set_out_of_credit(control, "openai", False)
    try:
        assert stopped.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()  # Prefect logs go there too
        assert err[-1] == "error: " + quota_message("openai", "tagging:quota-cli")
        assert [line for line in err if line.startswith("error:")] == err[-1:]
        # Prefect's task retries (3 for transient errors) did not fire either.
        assert quota_refusals(emulator) - refused_before == 1

        main()  # topped up: the rerun resumes and finishes
        ctx = context_for("ticket-tagging")
        run = ctx.ledger.run_by_key("tagging:quota-cli")
        counts = ctx.ledger.count_items(run["id"])
        assert run["status"] == "finished" and "failed" not in counts
        batch_ids = [s["provider_batch_id"] for s in ctx.ledger.shards(run["id"])]
        assert ctx.ledger.totals(run["id"])["cost_picodollars"] > 0
        from lanewise.pricing import from_picodollars

        assert from_picodollars(ctx.ledger.totals(run["id"])["cost_picodollars"]) == \
            billed_for(emulator, batch_ids)
    finally:
        get_settings.cache_clear()
        context_for.cache_clear()


# --- estimates ----------------------------------------------------------------------


def catalog_task(name: str, **update):
    task = load_catalog(get_settings().catalog_path).get(name)
    return task.model_copy(update=update)


def test_tool_use_system_prompt_figures_are_the_published_ones():
    # platform.claude.com/docs/en/agents-and-tools/tool-use/overview, "Pricing"
    assert tool_use_system_tokens("claude-haiku-4-5", "tool") == 588
    assert tool_use_system_tokens("claude-haiku-4-5", "auto") == 496
    assert tool_use_system_tokens("claude-sonnet-4-5-20250929", "any") == 588
    assert tool_use_system_tokens("claude-opus-4-5", "none") == 496
    assert tool_use_system_tokens("claude-opus-4-1", "tool") == 315
    assert tool_use_system_tokens("claude-opus-4-0", "auto") == 313  # alias: its family
    assert tool_use_system_tokens("claude-next", "tool") == TOOL_USE_SYSTEM_TOKENS_UNKNOWN[1]
    with pytest.raises(ValueError):
        tool_use_system_tokens("claude-haiku-4-5", "required")


def test_an_anthropic_json_task_is_estimated_with_the_tool_use_system_prompt():
    openai_task = catalog_task("ticket-tagging")
    anthropic_task = catalog_task("ticket-tagging", provider="anthropic",
                                  model="claude-haiku-4-5")
    system = "You tag tickets."
    messages = [{"role": "user", "content": "The export fails every night. " * 20}]
    bare = count_prompt_tokens(messages, system=system) + schema_tokens(
        openai_task.output.json_schema)
    assert estimate_tokens(openai_task, system, messages) == bare
    assert estimate_tokens(anthropic_task, system, messages) == bare + 588
    # A text task sends no tool: no tool-use system prompt.
    summary = catalog_task("ticket-summary")
    assert estimate_tokens(summary, system, messages) == count_prompt_tokens(
        messages, system=system)


def test_reasoning_models_get_output_headroom_for_their_reasoning():
    assert is_reasoning_model("gpt-5") and is_reasoning_model("gpt-5-mini")
    assert is_reasoning_model("o3-mini")
    assert not is_reasoning_model("gpt-4o-mini") and not is_reasoning_model("gpt-5-chat-latest")
    plain = catalog_task("ticket-tagging")  # gpt-4o-mini, max_output_tokens 100
    assert estimate_output_tokens(plain) == (100, 0)
    thinking = catalog_task("ticket-tagging", model="gpt-5-mini")
    assert estimate_output_tokens(thinking) == (200, 100)
    usage = estimated_usage(thinking, input_tokens=5_000, requests=10)
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (
        5_000, 2_000, 1_000)


def test_a_reasoning_cost_estimate_is_not_below_a_real_reasoning_bill():
    """A gpt-5-mini answer that thinks as long as it writes: billed output is visible
    plus reasoning tokens; the estimate covers it, the visible cap alone does not."""
    from lanewise.pricing import Lane, Usage, load_price_table

    prices = load_price_table(get_settings().prices_path)
    task = catalog_task("ticket-tagging", model="gpt-5-mini")
    billed = Usage(input_tokens=400, output_tokens=190, reasoning_tokens=110)
    estimate = prices.cost_usd(task.model, estimated_usage(task, 400), Lane.BATCH)
    visible_only = prices.cost_usd(task.model, Usage(input_tokens=400, output_tokens=100),
                                   Lane.BATCH)
    actual = prices.cost_usd(task.model, billed, Lane.BATCH)
    assert visible_only < actual <= estimate

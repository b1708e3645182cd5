"""The emulator's live rate limits, through the official SDKs: the providers' headers,
counted from per-key budgets per model, 429s when a budget is spent, and the live fault
switches (429 storms, 5xx, 529, latency) with their scope."""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from typing import Any, Iterator

import anthropic
import httpx
import openai
import pytest

from lanewise.emulator import EmulatorConfig, RateLimits, running_emulator

OPENAI_MODEL = "gpt-4o-mini"
OTHER_OPENAI_MODEL = "gpt-4.1-nano"
CLAUDE = "claude-haiku-4-5"
HI = [{"role": "user", "content": "hi"}]
T0 = 1_800_000_000.0


class FrozenClock:
    """Wall time that only moves when the test moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def limits(emulator, control) -> Iterator[httpx.Client]:
    """The control client; budgets, counts and the limiter's clock are put back after."""
    limiter = emulator.state.rate_limiter
    clock = limiter.clock
    emulator.state.set_rate_limits()
    yield control
    limiter.clock = clock
    emulator.state.set_rate_limits()


@pytest.fixture()
def frozen(emulator, limits) -> FrozenClock:
    clock = FrozenClock()
    emulator.state.rate_limiter.clock = clock
    return clock


def gpt(emulator, key: str = "sk-a", retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.openai_base_url, api_key=key, max_retries=retries)


def claude(emulator, key: str = "sk-ant-a", retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emulator.anthropic_base_url, api_key=key,
                               max_retries=retries)


def chat(client: openai.OpenAI, model: str = OPENAI_MODEL, **extra):
    """A raw chat completion: (headers, parsed completion)."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, **extra)
    return raw.headers, raw.parse()


def message(client: anthropic.Anthropic, max_tokens: int = 20, **extra):
    """A raw Anthropic message: (headers, parsed message)."""
    raw = client.messages.with_raw_response.create(model=CLAUDE, max_tokens=max_tokens,
                                                   messages=HI, **extra)
    return raw.headers, raw.parse()


def go_seconds(text: str) -> float:
    """Parse an OpenAI reset value (a Go duration: 20ms, 1.5s, 6m0s, 1h0m0s)."""
    millis = re.fullmatch(r"(\d+(?:\.\d+)?)ms", text)
    if millis:
        return float(millis[1]) / 1000
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(\d+(?:\.\d+)?)s", text)
    assert parts, f"not a Go duration: {text!r}"
    return int(parts[1] or 0) * 3600 + int(parts[2] or 0) * 60 + float(parts[3])


def instant(text: str) -> float:
    """Parse an Anthropic reset value (RFC 3339, UTC)."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text), text
    return datetime.fromisoformat(text).timestamp()


def test_reset_durations_are_go_durations():
    from lanewise.emulator.rate_limit_http import go_duration

    assert [go_duration(s) for s in (0, 0.006, 0.02, 1, 1.5, 360, 3600, 5025.5)] == [
        "0s", "6ms", "20ms", "1s", "1.5s", "6m0s", "1h0m0s", "1h23m45.5s"]
    for seconds in (0.0004, 0.9994, 12.3456, 59.9999, 61, 7322.25):
        assert seconds <= go_seconds(go_duration(seconds)) < seconds + 0.001


def test_openai_headers_count_down_per_key_and_model(emulator, limits, frozen):
    limits.patch("/rate-limits", json={"requests_per_minute": 5, "tokens_per_minute": 10_000})
    client = gpt(emulator, "sk-a")
    used_tokens = 0
    for n in range(1, 4):
        headers, completion = chat(client)
        used_tokens += completion.usage.total_tokens
        assert headers["x-ratelimit-limit-requests"] == "5"
        assert headers["x-ratelimit-remaining-requests"] == str(5 - n)
        assert go_seconds(headers["x-ratelimit-reset-requests"]) == pytest.approx(12 * n)
        assert headers["x-ratelimit-limit-tokens"] == "10000"
        assert headers["x-ratelimit-remaining-tokens"] == str(10_000 - used_tokens)
        assert go_seconds(headers["x-ratelimit-reset-tokens"]) == pytest.approx(
            used_tokens * 60 / 10_000, abs=0.001)
    frozen.now += 12  # one request's worth refills in 60/5 s
    headers, _ = chat(client)
    assert headers["x-ratelimit-remaining-requests"] == "2"
    # Another key, and another model of the same key, have budgets of their own.
    assert chat(gpt(emulator, "sk-b"))[0]["x-ratelimit-remaining-requests"] == "4"
    assert chat(client, OTHER_OPENAI_MODEL)[0]["x-ratelimit-remaining-requests"] == "4"


def test_openai_spent_budget_is_a_real_429_with_retry_after(emulator, limits, frozen):
    limits.patch("/rate-limits", json={"requests_per_minute": 2})
    client = gpt(emulator)
    limits.delete("/billing")
    refused = emulator.state.snapshot()["rate_limited"]
    chat(client)
    chat(client)
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    error = info.value
    assert error.status_code == 429
    assert error.body["type"] == "requests" and error.body["code"] == "rate_limit_exceeded"
    assert re.fullmatch(
        r"Rate limit reached for gpt-4o-mini in organization org-\S+ on requests per min "
        r"\(RPM\): Limit 2, Used 2, Requested 1\. Please try again in 30s\. Visit "
        r"https://platform\.openai\.com/account/rate-limits to learn more\.",
        error.body["message"])
    headers = error.response.headers
    assert headers["retry-after"] == "30" and headers["retry-after-ms"] == "30000"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert go_seconds(headers["x-ratelimit-reset-requests"]) == 60
    frozen.now += 30
    headers, _ = chat(client)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    billed = limits.get("/billing", params={"provider": "openai"}).json()["total"]
    assert billed["requests"] == 3  # the refused call was not billed
    assert emulator.state.snapshot()["rate_limited"] == refused + 1


def test_openai_tokens_reserve_max_tokens_then_count_what_was_used(emulator, limits, frozen):
    limits.patch("/rate-limits", json={"tokens_per_minute": 500})
    client = gpt(emulator)
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, max_tokens=600)  # prompt + max_tokens can never fit
    body = info.value.body
    assert body["type"] == "tokens" and body["code"] == "rate_limit_exceeded"
    assert re.fullmatch(r"Request too large for gpt-4o-mini in organization \S+ on tokens per "
                        r"min \(TPM\): Limit 500, Requested 607\. The input or output tokens "
                        r"must be reduced in order to run successfully\. .*", body["message"])
    headers, completion = chat(client, max_tokens=400)  # admitted on its 407-token estimate
    assert headers["x-ratelimit-remaining-tokens"] == str(500 - completion.usage.total_tokens)


def test_sdk_retry_honours_retry_after_when_the_budget_is_spent(emulator, limits):
    limits.patch("/rate-limits", json={"requests_per_minute": 30})  # one back every 2 s
    for sdk, make, call in ((openai, gpt, chat), (anthropic, claude, message)):
        impatient = make(emulator, "sk-retry", retries=0)
        for _ in range(100):
            try:
                call(impatient)
            except sdk.RateLimitError:
                break
        else:
            pytest.fail("the budget of 30 requests per minute was never spent")
        seen: list[tuple[float, Any]] = []
        hooks = {"response": [lambda response, seen=seen: seen.append((time.monotonic(),
                                                                        response))]}
        patient = make(emulator, "sk-retry", retries=2)
        patient = patient.with_options(http_client=sdk.DefaultHttpxClient(event_hooks=hooks))
        headers, _ = call(patient)  # refused, then retried once retry-after has passed
        assert [response.status_code for _, response in seen] == [429, 200]
        refusal = seen[0][1].headers
        wait = float(refusal.get("retry-after-ms", 0)) / 1000 or float(refusal["retry-after"])
        assert 0 < wait <= 2 and seen[1][0] - seen[0][0] >= wait
        remaining = (headers.get("x-ratelimit-remaining-requests")
                     or headers["anthropic-ratelimit-requests-remaining"])
        assert int(remaining) <= 1


def test_anthropic_headers_count_down_with_rfc3339_resets(emulator, limits, frozen):
    limits.patch("/rate-limits", json={"requests_per_minute": 5,
                                       "input_tokens_per_minute": 1_000,
                                       "output_tokens_per_minute": 300})
    client = claude(emulator)
    used_in = used_out = 0
    for n in range(1, 4):
        headers, reply = message(client)
        used_in += reply.usage.input_tokens
        used_out += reply.usage.output_tokens
        assert headers["anthropic-ratelimit-requests-limit"] == "5"
        assert headers["anthropic-ratelimit-requests-remaining"] == str(5 - n)
        assert instant(headers["anthropic-ratelimit-requests-reset"]) == T0 + 12 * n
        assert headers["anthropic-ratelimit-input-tokens-remaining"] == str(1_000 - used_in)
        assert instant(headers["anthropic-ratelimit-input-tokens-reset"]) == math.ceil(
            T0 + used_in * 60 / 1_000)
        assert headers["anthropic-ratelimit-output-tokens-limit"] == "300"
        assert headers["anthropic-ratelimit-output-tokens-remaining"] == str(300 - used_out)
        # The tokens family is the token limit with the least room left: output here.
        assert headers["anthropic-ratelimit-tokens-limit"] == "300"
        assert headers["anthropic-ratelimit-tokens-remaining"] == str(300 - used_out)
    other = message(claude(emulator, "sk-ant-b"))[0]
    assert other["anthropic-ratelimit-requests-remaining"] == "4"


def test_anthropic_spent_budget_is_a_rate_limit_error_with_retry_after(emulator, limits,
                                                                      frozen):
    limits.patch("/rate-limits", json={"input_tokens_per_minute": 20})
    client = claude(emulator)
    first = message(client)[1].usage.input_tokens
    assert first == 7
    message(client)
    with pytest.raises(anthropic.RateLimitError) as info:
        message(client)
    error = info.value
    assert error.body["type"] == "error"
    assert error.body["error"]["type"] == "rate_limit_error"
    assert error.body["error"]["message"].startswith(
        "This request would exceed your organization's rate limit of 20 input tokens per "
        "minute (org: ")
    headers = error.response.headers
    assert headers["retry-after"] == "3"  # (14 + 7 - 20) tokens at 20 per minute
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "6"
    assert instant(headers["anthropic-ratelimit-input-tokens-reset"]) == T0 + 42
    frozen.now += 3
    message(client)
    # Output tokens are reserved up to max_tokens before the answer.
    limits.patch("/rate-limits", json={"input_tokens_per_minute": 0,
                                       "output_tokens_per_minute": 100})
    with pytest.raises(anthropic.RateLimitError) as info:
        message(client, max_tokens=200)
    assert "rate limit of 100 output tokens per minute" in info.value.body["error"]["message"]


def test_unbudgeted_dimensions_report_a_nominal_account(emulator, limits):
    headers, completion = chat(gpt(emulator))
    assert headers["x-ratelimit-limit-requests"] == "10000"
    assert headers["x-ratelimit-remaining-requests"] == "9999"
    assert headers["x-ratelimit-reset-requests"] == "6ms"
    assert headers["x-ratelimit-remaining-tokens"] == str(
        10_000_000 - completion.usage.total_tokens)
    headers, _ = message(claude(emulator))
    assert headers["anthropic-ratelimit-requests-remaining"] == "3999"
    assert headers["anthropic-ratelimit-tokens-limit"] == "400000"  # the output family
    for family in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert instant(headers[f"anthropic-ratelimit-{family}-reset"]) - time.time() < 5


def test_fixed_window_forgets_at_the_end_of_the_minute(emulator, limits, frozen):
    limits.patch("/rate-limits", json={"requests_per_minute": 2, "fixed_window": True})
    client = gpt(emulator)
    chat(client)
    frozen.now += 10
    headers, _ = chat(client)
    assert go_seconds(headers["x-ratelimit-reset-requests"]) == 50
    frozen.now += 10
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    assert info.value.response.headers["retry-after"] == "40"
    frozen.now += 40
    headers, _ = chat(client)
    assert headers["x-ratelimit-remaining-requests"] == "1"


def test_rules_give_budgets_per_key_and_model(emulator, limits, frozen):
    limits.patch("/rate-limits", json={"requests_per_minute": 10, "rules": [
        {"key": "sk-small", "requests_per_minute": 1},
        {"model": OTHER_OPENAI_MODEL, "requests_per_minute": 3},
        {"key": "sk-small", "model": OTHER_OPENAI_MODEL, "requests_per_minute": 2},
        {"provider": "anthropic", "requests_per_minute": 7}]})

    def limit(key: str, model: str) -> str:
        return chat(gpt(emulator, key), model)[0]["x-ratelimit-limit-requests"]

    assert limit("sk-any", OPENAI_MODEL) == "10"
    assert limit("sk-small", OPENAI_MODEL) == "1"
    assert limit("sk-any", OTHER_OPENAI_MODEL) == "3"
    assert limit("sk-small", OTHER_OPENAI_MODEL) == "2"
    assert message(claude(emulator, "sk-small"))[0][
        "anthropic-ratelimit-requests-limit"] == "1"  # a key outranks a provider
    assert message(claude(emulator))[0]["anthropic-ratelimit-requests-limit"] == "7"
    with pytest.raises(openai.RateLimitError):
        chat(gpt(emulator, "sk-small"))
    usage = limits.get("/rate-limits/usage").json()["data"]
    assert "sk-small" not in str(usage)  # keys are shown as fingerprints only
    assert {row["model"] for row in usage} == {OPENAI_MODEL, OTHER_OPENAI_MODEL, CLAUDE}


def test_budgets_at_start_and_bad_patches(tmp_path):
    config = EmulatorConfig(rate_limits=RateLimits(requests_per_minute=1))
    with running_emulator(config, state_dir=tmp_path) as emu:
        client = gpt(emu)
        chat(client)
        with pytest.raises(openai.RateLimitError):
            chat(client)
        control = f"{emu.url}/_emulator/rate-limits"
        assert httpx.patch(control, json={"requests_per_minute": -1}).status_code == 422
        assert httpx.patch(control, json=[1]).status_code == 422
        assert httpx.patch(control, json={"rules": [{"provider": "x"}]}).status_code == 422
        # Raising the budget applies to what was counted so far.
        assert httpx.patch(control, json={"requests_per_minute": 3}).json()[
            "requests_per_minute"] == 3
        assert chat(client)[0]["x-ratelimit-remaining-requests"] == "1"
        assert httpx.delete(f"{control}/usage").json() == {"cleared": True}
        assert chat(client)[0]["x-ratelimit-remaining-requests"] == "2"


def test_budgets_from_the_environment_and_the_command_line(monkeypatch):
    from click.testing import CliRunner

    from lanewise.cli import cli
    from lanewise.emulator import server
    from lanewise.emulator.background import config_from_env

    monkeypatch.setenv("LANEWISE_EMULATOR_REQUESTS_PER_MINUTE", "7")
    monkeypatch.setenv("LANEWISE_EMULATOR_FIXED_WINDOW", "true")
    monkeypatch.setenv("LANEWISE_EMULATOR_RULES", '[{"key": "k", "tokens_per_minute": 9}]')
    monkeypatch.setenv("LANEWISE_EMULATOR_LIVE_SCOPE_MODELS", "gpt-4o-mini, gpt-4.1-nano")
    config = config_from_env()
    assert config.rate_limits.requests_per_minute == 7 and config.rate_limits.fixed_window
    assert config.rate_limits.rules[0].tokens_per_minute == 9
    assert config.faults.live_scope_models == ["gpt-4o-mini", "gpt-4.1-nano"]

    seen = {}
    monkeypatch.setattr(server, "serve_forever",
                        lambda config, *args, **kwargs: seen.setdefault("config", config))
    result = CliRunner().invoke(cli, [
        "emulator", "--requests-per-minute", "30", "--input-tokens-per-minute", "5000",
        "--fixed-window", "true", "--rate-limit-rate", "0.3", "--seed", "4"])
    assert result.exit_code == 0, result.output
    limits = seen["config"].rate_limits
    assert (limits.requests_per_minute, limits.input_tokens_per_minute) == (30, 5000)
    assert limits.fixed_window and seen["config"].faults.rate_limit_rate == 0.3


def test_429_storm_share_is_as_configured_with_headers(emulator, limits):
    limits.patch("/faults", json={"seed": 11, "rate_limit_rate": 0.3})
    calls = 300
    for client, call, error_type in ((gpt(emulator), chat, openai.RateLimitError),
                                     (claude(emulator), message, anthropic.RateLimitError)):
        storms = 0
        for _ in range(calls):
            try:
                call(client)
            except error_type as error:
                storms += 1
                headers = error.response.headers
                assert float(headers["retry-after"]) == 1.0
                assert ("x-ratelimit-remaining-requests" in headers
                        or "anthropic-ratelimit-requests-remaining" in headers)
        assert 0.22 <= storms / calls <= 0.38, storms


def test_5xx_and_529_shares_are_as_configured(emulator, limits):
    limits.patch("/faults", json={"seed": 5, "server_error_rate": 0.1, "unavailable_rate": 0.1,
                                  "overloaded_rate": 0.2})
    statuses: dict[int, int] = {}
    client = claude(emulator)
    calls = 300
    for _ in range(calls):
        try:
            message(client)
            status = 200
        except anthropic.APIStatusError as error:
            status = error.status_code
        statuses[status] = statuses.get(status, 0) + 1
    assert set(statuses) == {200, 500, 503, 529}
    assert 0.13 <= statuses[529] / calls <= 0.27
    assert 0.13 <= (statuses[500] + statuses[503]) / calls <= 0.27


def test_live_faults_and_latency_can_be_scoped(emulator, limits):
    limits.patch("/faults", json={"rate_limit_rate": 1.0, "latency_ms": 600,
                                  "live_scope_models": [OPENAI_MODEL]})
    client = gpt(emulator)

    def seconds(call, *args) -> float:
        started = time.monotonic()
        call(*args)
        return time.monotonic() - started

    assert seconds(lambda: pytest.raises(openai.RateLimitError, chat, client)) >= 0.6
    assert max(seconds(chat, client, OTHER_OPENAI_MODEL) for _ in range(3)) < 0.6
    assert seconds(message, claude(emulator)) < 0.6
    limits.patch("/faults", json={"live_scope_models": [], "live_scope_providers": ["anthropic"],
                                  "latency_ms": 0})
    chat(client)
    with pytest.raises(anthropic.RateLimitError):
        message(claude(emulator))
    limits.patch("/faults", json={"rate_limit_rate": 0, "live_scope_providers": []})
    limits.post("/faults/next", json={"status": 500, "count": 2, "model": OTHER_OPENAI_MODEL})
    chat(client)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            chat(client, OTHER_OPENAI_MODEL)
    chat(client, OTHER_OPENAI_MODEL)

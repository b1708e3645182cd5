"""Cost truth: the price table, its sources, and every billing rule (no server).

Each rule is checked with the providers' own published examples and figures; each
rate of the shipped snapshot against the source value recorded here.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import anthropic.types
import openai.types
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from rich.console import Console

from lanewise import cli as cli_module
from lanewise.batch.steps import outcome_update
from lanewise.catalog import load_catalog
from lanewise.errors import ConfigurationError
from lanewise.ledger import MIGRATIONS, Ledger
from lanewise.pricing import (
    PICODOLLARS_PER_DOLLAR,
    Lane,
    PriceTable,
    UnpricedUsageError,
    Usage,
    load_price_table,
    per_million,
    to_picodollars,
)
from lanewise.providers.base import ItemOutcome
from lanewise.settings import DATA_DIR, get_settings

M = Decimal(1_000_000)
SNAPSHOT = DATA_DIR / "prices.json"

# USD per million tokens as published, recorded when the snapshot was checked
# (2026-11-23). Standard input / output / cached input and batch input / output:
# shared/provider-api-notes.md (OpenAI and Anthropic pricing pages). 5-minute and 1-hour
# cache writes: Anthropic's pricing page (1.25x and 2x input); OpenAI bills cache writes
# as ordinary input on these models. Batch cached input: OpenAI's Batch price table for
# the gpt-5 rows; Anthropic's cache read x 0.5 (the discounts stack); for the 4o and 4.1
# families no public figure: the batch input rate (unconfirmed).
#        model: (in, out, cached, write 5m, write 1h,
#                batch in, batch out, batch cached, batch write 5m, batch write 1h)
EXPECTED = {
    "gpt-4o": ("2.50", "10.00", "1.25", "2.50", None, "1.25", "5.00", "1.25", "1.25", None),
    "gpt-4o-mini": ("0.15", "0.60", "0.075", "0.15", None,
                    "0.075", "0.30", "0.075", "0.075", None),
    "gpt-4.1": ("2.00", "8.00", "0.50", "2.00", None, "1.00", "4.00", "1.00", "1.00", None),
    "gpt-4.1-mini": ("0.40", "1.60", "0.10", "0.40", None, "0.20", "0.80", "0.20", "0.20", None),
    "gpt-4.1-nano": ("0.10", "0.40", "0.025", "0.10", None,
                     "0.05", "0.20", "0.05", "0.05", None),
    "gpt-5": ("1.25", "10.00", "0.125", "1.25", None, "0.625", "5.00", "0.0625", "0.625", None),
    "gpt-5-mini": ("0.25", "2.00", "0.025", "0.25", None,
                   "0.125", "1.00", "0.0125", "0.125", None),
    "gpt-5-nano": ("0.05", "0.40", "0.005", "0.05", None,
                   "0.025", "0.20", "0.0025", "0.025", None),
    "claude-haiku-4-5": ("1.00", "5.00", "0.10", "1.25", "2.00",
                         "0.50", "2.50", "0.05", "0.625", "1.00"),
    "claude-sonnet-4-5": ("3.00", "15.00", "0.30", "3.75", "6.00",
                          "1.50", "7.50", "0.15", "1.875", "3.00"),
    "claude-opus-4-5": ("5.00", "25.00", "0.50", "6.25", "10.00",
                        "2.50", "12.50", "0.25", "3.125", "5.00"),
}
RATE_FIELDS = ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h")
UNCONFIRMED = {m: ["cache_read_input_token_cost_batches"]
               for m in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano")}


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable.from_file(SNAPSHOT)


def write_table(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries))
    return path


def litellm_entry(**overrides) -> dict:
    """An entry shaped like LiteLLM's, e-notation floats as LiteLLM writes them."""
    entry = {"litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000,
             "input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07,
             "input_cost_per_token_batches": 7.5e-08, "output_cost_per_token_batches": 3e-07,
             "cache_read_input_token_cost": 7.5e-08, "supports_vision": True,
             "input_cost_per_token_priority": 2.5e-07,
             "search_context_cost_per_query": {"search_context_size_low": 0.025}}
    entry.update(overrides)
    return entry


# --- the snapshot against its sources ---------------------------------------------------


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_every_snapshot_rate_equals_its_recorded_source_value(prices, model):
    price = prices.price(model)
    expected = EXPECTED[model]
    got = [per_million(getattr(price.live, f)) for f in RATE_FIELDS]
    got += [per_million(getattr(price.batch, f)) for f in RATE_FIELDS]
    assert got == [None if e is None else Decimal(e) for e in expected]


def test_the_snapshot_has_every_model_of_the_catalog_and_the_notes(prices):
    notes = (Path(__file__).parents[2] / "shared" / "provider-api-notes.md")
    if notes.exists():  # the fact sheet's price table lists these models
        listed = set(re.findall(r"^\| (gpt-[\w.-]+|claude-[\w.-]+) \|", notes.read_text(), re.M))
        assert listed <= set(EXPECTED)
    catalog = load_catalog(get_settings().catalog_path)
    assert {t.model for t in catalog.tasks.values()} <= set(EXPECTED)
    assert prices.annotated_models() == sorted(EXPECTED)


def test_every_entry_says_where_its_figures_come_from_and_when(prices):
    raw = json.loads(SNAPSHOT.read_text())
    for model in EXPECTED:
        entry = raw[model]
        assert entry["lanewise_source"].startswith("https://")
        assert "LiteLLM" in entry["lanewise_source"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry["lanewise_checked"])
        assert entry["lanewise_unconfirmed"] == UNCONFIRMED.get(model, [])
        if entry["lanewise_unconfirmed"]:
            assert "no cached-input rate" in entry["lanewise_note"]
        # The snapshot's list is exactly what the loader's rules mark unconfirmed.
        assert sorted(prices.price(model).unconfirmed) == entry["lanewise_unconfirmed"]


def test_unconfirmed_batch_cached_input_is_the_batch_input_rate(prices):
    for model in UNCONFIRMED:
        price = prices.price(model)
        assert price.batch.cached_input == price.batch.input
        assert "batch input rate" in price.unconfirmed["cache_read_input_token_cost_batches"]
    for model in ("gpt-5", "gpt-5-mini", "gpt-5-nano"):  # published: half the cached rate
        price = prices.price(model)
        assert not price.unconfirmed and price.batch.cached_input == price.live.cached_input / 2


def test_every_rate_is_whole_picodollars_per_token(prices):
    for model in EXPECTED:
        price = prices.price(model)
        for lane in (price.live, price.batch):
            for name in RATE_FIELDS:
                rate = getattr(lane, name)
                if rate is not None:
                    assert (rate * PICODOLLARS_PER_DOLLAR) % 1 == 0, (model, name)


# --- billing rules with the providers' published examples -------------------------------


def test_openai_prompt_caching_example():
    # OpenAI's prompt caching guide: 2,006 prompt tokens of which 1,920 were cached.
    usage = Usage.from_openai({
        "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920},
        "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0}})
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (86, 1920, 300)
    prices = load_price_table(SNAPSHOT)
    live = prices.cost_usd("gpt-4o", usage, Lane.LIVE)
    assert live == (86 * Decimal("2.50") + 1920 * Decimal("1.25") + 300 * Decimal("10")) / M
    batch = prices.cost_usd("gpt-4o", usage, Lane.BATCH)
    # batch: half on input and output; cached input at the batch input rate (unconfirmed)
    assert batch == (86 * Decimal("1.25") + 1920 * Decimal("1.25") + 300 * Decimal("5")) / M
    gpt5 = prices.cost_usd("gpt-5", usage, Lane.BATCH)
    assert gpt5 == (86 * Decimal("0.625") + 1920 * Decimal("0.0625") + 300 * Decimal("5")) / M


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-5"])
def test_anthropic_cache_multipliers_and_batch_stacking(prices, model):
    price = prices.price(model)
    base = price.live.input
    assert price.live.cache_write_5m == base * Decimal("1.25")
    assert price.live.cache_write_1h == base * 2
    assert price.live.cached_input == base * Decimal("0.1")
    for name in RATE_FIELDS:  # the batch discount stacks with every cache multiplier
        assert getattr(price.batch, name) == getattr(price.live, name) / 2
    usage = Usage.from_anthropic({
        "input_tokens": 50, "output_tokens": 500, "cache_read_input_tokens": 10_000,
        "cache_creation_input_tokens": 3_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1_000,
                           "ephemeral_1h_input_tokens": 2_000}})
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (1_000, 2_000)
    live = prices.cost_usd(model, usage, Lane.LIVE)
    assert live == (50 * base + 500 * price.live.output + 10_000 * base / 10
                    + 1_000 * base * Decimal("1.25") + 2_000 * base * 2)
    assert prices.cost_usd(model, usage, Lane.BATCH) == live / 2


def test_one_hour_writes_are_not_billed_at_the_five_minute_rate(prices):
    five = Usage(cache_write_tokens=1_000_000)
    hour = Usage(cache_write_1h_tokens=1_000_000)
    assert prices.cost_usd("claude-sonnet-4-5", five, Lane.LIVE) == Decimal("3.75")
    assert prices.cost_usd("claude-sonnet-4-5", hour, Lane.LIVE) == Decimal("6")
    # 37.5% more than the 5-minute rate the ledger used to charge
    assert Decimal("6") / Decimal("3.75") == Decimal("1.6")


def test_anthropic_writes_without_the_ttl_split_are_five_minute_writes():
    usage = Usage.from_anthropic({"input_tokens": 5, "output_tokens": 7,
                                  "cache_creation_input_tokens": 300,
                                  "cache_read_input_tokens": 0, "cache_creation": None})
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (300, 0)


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_batch_is_half_of_live_on_input_and_output(prices, model):
    price = prices.price(model)
    assert price.batch.input == price.live.input / 2
    assert price.batch.output == price.live.output / 2
    usage = Usage(input_tokens=1234, output_tokens=567)
    assert prices.cost_usd(model, usage, Lane.BATCH) * 2 == prices.cost_usd(model, usage,
                                                                              Lane.LIVE)


def test_reasoning_tokens_are_kept_apart_and_billed_as_output(prices):
    usage = Usage.from_openai({"prompt_tokens": 100, "completion_tokens": 900,
                               "completion_tokens_details": {"reasoning_tokens": 800}})
    assert usage.output_tokens == 900 and usage.reasoning_tokens == 800
    assert prices.cost_usd("gpt-5-mini", usage, Lane.LIVE) == (100 * Decimal("0.25")
                                                               + 900 * Decimal("2")) / M
    thinking = Usage.from_anthropic({"input_tokens": 10, "output_tokens": 50,
                                     "output_tokens_details": {"thinking_tokens": 40}})
    assert thinking.output_tokens == 50 and thinking.reasoning_tokens == 40


def test_openai_cache_writes_are_read_and_priced(prices):
    usage = Usage.from_openai({"prompt_tokens": 5000, "completion_tokens": 10,
                               "prompt_tokens_details": {"cached_tokens": 1000,
                                                         "cache_write_tokens": 3000}})
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == \
        (1000, 1000, 3000)
    # no write surcharge on gpt-4o-mini: writes cost the input rate, on either lane
    assert prices.cost_usd("gpt-4o-mini", usage, Lane.LIVE) == \
        (4000 * Decimal("0.15") + 1000 * Decimal("0.075") + 10 * Decimal("0.6")) / M


def test_costs_are_exact_picodollars(prices):
    usage = Usage(input_tokens=3, cached_input_tokens=7, cache_write_tokens=11,
                  output_tokens=13, cache_write_1h_tokens=17)
    for model in EXPECTED:
        for lane in Lane:
            cost = prices.cost_usd(model, usage, lane) if model.startswith("claude") else \
                prices.cost_usd(model, Usage(3, 7, 11, 13), lane)
            assert cost * PICODOLLARS_PER_DOLLAR == to_picodollars(cost)


# --- usage the SDKs return --------------------------------------------------------------


def test_sdk_usage_objects_dumped_whole_are_read():
    oai = openai.types.CompletionUsage(
        prompt_tokens=2006, completion_tokens=300, total_tokens=2306,
        prompt_tokens_details={"cached_tokens": 1920, "audio_tokens": 0},
        completion_tokens_details={"reasoning_tokens": 0, "audio_tokens": 0}).model_dump()
    assert Usage.from_openai(oai, service_tier="default").cached_input_tokens == 1920
    claude = anthropic.types.Usage(
        input_tokens=10, output_tokens=20, cache_read_input_tokens=5,
        cache_creation_input_tokens=30,
        cache_creation={"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
        server_tool_use={"web_search_requests": 0, "web_fetch_requests": 2},
        service_tier="batch", inference_geo="global", speed="standard").model_dump()
    assert Usage.from_anthropic(claude) == Usage(10, 5, 10, 20, 20, 0)


@pytest.mark.parametrize(("reader", "usage", "field_name"), [
    ("openai", {"prompt_tokens": 10, "prompt_tokens_details": {"audio_tokens": 4}},
     "prompt_tokens_details.audio_tokens"),
    ("openai", {"completion_tokens": 10, "completion_tokens_details": {"audio_tokens": 1}},
     "completion_tokens_details.audio_tokens"),
    ("openai", {"prompt_tokens": 10, "web_search_calls": 1}, "web_search_calls"),
    ("openai", {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 2}},
     "prompt_tokens_details"),
    ("anthropic", {"input_tokens": 1, "server_tool_use": {"web_search_requests": 3}},
     "server_tool_use.web_search_requests"),
    ("anthropic", {"input_tokens": 1, "service_tier": "priority"}, "service_tier"),
    ("anthropic", {"input_tokens": 1, "speed": "fast"}, "speed"),
    ("anthropic", {"input_tokens": 1, "inference_geo": "us"}, "inference_geo"),
    ("anthropic", {"input_tokens": 1, "code_execution_seconds": 12}, "code_execution_seconds"),
    ("anthropic", {"input_tokens": 1, "cache_creation_input_tokens": 5,
                   "cache_creation": {"ephemeral_5m_input_tokens": 1,
                                      "ephemeral_1h_input_tokens": 1}}, "cache_creation"),
])
def test_billed_usage_the_table_cannot_price_is_refused_by_name(reader, usage, field_name):
    read = Usage.from_openai if reader == "openai" else Usage.from_anthropic
    with pytest.raises(UnpricedUsageError, match=re.escape(field_name)) as caught:
        read(usage)
    assert caught.value.field == field_name
    assert isinstance(caught.value, ConfigurationError)


@pytest.mark.parametrize("tier", ["priority", "flex", "scale", "auto"])
def test_openai_service_tiers_other_than_default_are_refused(tier):
    with pytest.raises(UnpricedUsageError, match="service_tier"):
        Usage.from_openai({"prompt_tokens": 1}, service_tier=tier)


def test_known_fields_at_zero_and_unknown_labels_are_fine():
    Usage.from_openai({"prompt_tokens": 5, "prompt_tokens_details": {"audio_tokens": 0,
                       "image_tokens": 3, "text_tokens": 2},
                       "completion_tokens_details": {"accepted_prediction_tokens": 1,
                                                     "rejected_prediction_tokens": 2}})
    Usage.from_anthropic({"input_tokens": 1, "server_tool_use": None, "service_tier": None,
                          "some_new_label": "text", "some_flag": True, "zero_count": 0})


def test_usage_that_needs_a_missing_rate_is_refused_at_pricing(prices, tmp_path):
    with pytest.raises(UnpricedUsageError, match="cache_creation_input_token_cost_above_1hr"):
        prices.cost_usd("gpt-4o-mini", Usage(cache_write_1h_tokens=1), Lane.LIVE)
    table = PriceTable.from_file(write_table(tmp_path / "p.json", {"m": litellm_entry()}))
    assert table.price("m").live.cache_write_5m is None  # LiteLLM has no OpenAI write rate
    with pytest.raises(UnpricedUsageError, match="cache_write_tokens.*cache_creation_input"):
        table.cost_usd("m", Usage(cache_write_tokens=5), Lane.BATCH)
    tiered = PriceTable.from_file(write_table(tmp_path / "t.json", {"m": litellm_entry(
        input_cost_per_token_above_272k_tokens=3e-07,
        output_cost_per_reasoning_token=1e-06)}))
    assert tiered.cost_usd("m", Usage(input_tokens=272_000), Lane.LIVE) > 0
    with pytest.raises(UnpricedUsageError, match="above 272,000"):
        tiered.cost_usd("m", Usage(input_tokens=272_001), Lane.LIVE)
    with pytest.raises(UnpricedUsageError, match="reasoning"):
        tiered.cost_usd("m", Usage(output_tokens=5, reasoning_tokens=2), Lane.LIVE)


# --- reading a LiteLLM table -------------------------------------------------------------


def test_a_litellm_shaped_table_with_unknown_models_and_keys_loads(tmp_path):
    path = write_table(tmp_path / "model_prices.json", {
        "sample_spec": {"input_cost_per_token": 0.0, "litellm_provider": "one of ..."},
        "gpt-4o-mini": litellm_entry(),
        "azure/gpt-4o": litellm_entry(litellm_provider="azure"),
        "broken-model": {"litellm_provider": "openai"},
        "claude-haiku-4-5": {
            "litellm_provider": "anthropic", "input_cost_per_token": 1e-06,
            "output_cost_per_token": 5e-06, "input_cost_per_token_batches": 5e-07,
            "output_cost_per_token_batches": 2.5e-06, "cache_read_input_token_cost": 1e-07,
            "cache_creation_input_token_cost": 1.25e-06,
            "cache_creation_input_token_cost_above_1hr": 2e-06, "prompt_cache_min_tokens": 4096,
            "supports_computer_use": True},
    })
    table = PriceTable.from_file(path)
    mini = table.price("gpt-4o-mini")
    assert mini.live.input == Decimal("0.00000015")  # exact, never a float
    assert isinstance(mini.live.input, Decimal) and str(mini.live.input) == "1.5E-7"
    assert mini.batch.cached_input == mini.batch.input
    assert list(mini.unconfirmed) == ["cache_read_input_token_cost_batches"]
    haiku = table.price("claude-haiku-4-5")
    assert haiku.batch.cached_input == Decimal("5E-8")
    assert haiku.batch.cache_write_5m == Decimal("6.25E-7")
    assert haiku.batch.cache_write_1h == Decimal("1E-6")
    assert not haiku.unconfirmed and "stack" in haiku.derived[
        "cache_read_input_token_cost_batches"]
    with pytest.raises(ConfigurationError, match="litellm_provider 'azure'"):
        table.price("azure/gpt-4o")
    with pytest.raises(ConfigurationError, match="not in the price table"):
        table.price("gpt-9")


@pytest.mark.parametrize(("provider", "drop"), [
    ("openai", "output_cost_per_token_batches"),
    ("openai", "cache_read_input_token_cost"),
    ("anthropic", "cache_creation_input_token_cost"),
])
def test_a_model_lacking_a_needed_rate_is_a_clear_error(tmp_path, provider, drop):
    entry = litellm_entry(litellm_provider=provider, cache_creation_input_token_cost=2e-07)
    entry.pop(drop)
    table = PriceTable.from_file(write_table(tmp_path / "p.json", {
        "needed": entry, "fine": litellm_entry()}))
    assert table.price("fine")  # one broken entry does not break the others
    with pytest.raises(ConfigurationError, match=f"'needed' lacks {drop}"):
        table.price("needed")


def test_rates_that_are_not_whole_picodollars_or_not_numbers_are_refused(tmp_path):
    table = PriceTable.from_file(write_table(tmp_path / "p.json", {
        "tiny": litellm_entry(input_cost_per_token=1.5e-13),
        "text": litellm_entry(output_cost_per_token="free")}))
    with pytest.raises(ConfigurationError, match="whole number of picodollars"):
        table.price("tiny")
    with pytest.raises(ConfigurationError, match="not a number"):
        table.price("text")


def test_the_old_lanewise_format_is_refused_with_a_pointer(tmp_path):
    path = write_table(tmp_path / "old.json", {"models": {"gpt-4o": {
        "provider": "openai", "input": "2.5", "batch_input": "1.25"}}})
    with pytest.raises(ConfigurationError, match="old format"):
        PriceTable.from_file(path)


# --- the ledger keeps 1-hour writes and reasoning apart ---------------------------------


def test_outcome_update_and_totals_keep_1h_writes_and_reasoning(ledger_url, prices):
    ledger = Ledger(ledger_url)
    run, _ = ledger.open_run("k", "ticket-summary", "anthropic", "claude-haiku-4-5", "in")
    ids = ledger.add_items(run["id"], [{"row_number": n, "input_key": str(n),
                                        "dedup_key": str(n), "status": "pending"}
                                       for n in (1, 2)], [])
    task = load_catalog(get_settings().catalog_path).get("ticket-summary")
    ctx = SimpleNamespace(task=task, prices=prices)
    usage = Usage(input_tokens=10, cached_input_tokens=20, cache_write_tokens=30,
                  output_tokens=40, cache_write_1h_tokens=50, reasoning_tokens=5)
    update = outcome_update(ctx, ItemOutcome("c", True, "A summary.", usage), 0)
    assert update["cache_write_1h_tokens"] == 50 and update["reasoning_tokens"] == 5
    assert update["cost_picodollars"] == to_picodollars(
        prices.cost_usd("claude-haiku-4-5", usage, Lane.BATCH))
    ledger.update_items([{"b_id": item_id, **update} for item_id in ids.values()])
    totals = ledger.totals(run["id"])
    assert totals["cache_write_1h_tokens"] == 100 and totals["reasoning_tokens"] == 10
    assert totals["cache_write_tokens"] == 60
    assert totals["cost_picodollars"] == 2 * update["cost_picodollars"]


def test_migration_0004_gives_existing_items_zero(ledger_url):
    engine = sa.create_engine(ledger_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
        conn.exec_driver_sql(
            "INSERT INTO runs (run_key, token, task, provider, model, input_url, status, "
            "created_at) VALUES ('old', 'abc123', 't', 'anthropic', 'm', 'x', 'finished', 1)")
        conn.exec_driver_sql(
            "INSERT INTO items (run_id, row_number, attempt, status, excerpted, input_tokens, "
            "cached_input_tokens, cache_write_tokens, output_tokens, cost_picodollars, "
            "live_cost_picodollars) SELECT id, 1, 0, 'succeeded', false, 1, 2, 3, 4, 5, 10 "
            "FROM runs")
        command.upgrade(config, "head")
    engine.dispose()
    ledger = Ledger(ledger_url)
    totals = ledger.totals(ledger.run_by_key("old")["id"])
    assert totals["cache_write_tokens"] == 3
    assert totals["cache_write_1h_tokens"] == 0 and totals["reasoning_tokens"] == 0


# --- `lanewise prices` -------------------------------------------------------------------


@pytest.fixture()
def wide(monkeypatch):
    monkeypatch.setattr(cli_module, "console", Console(width=400))


def test_prices_command_lists_the_table_and_the_unconfirmed_rates(wide):
    result = CliRunner().invoke(cli_module.cli, ["prices"])
    assert result.exit_code == 0, result.output
    for model in EXPECTED:
        assert model in result.output
    assert "USD per million tokens" in result.output
    unconfirmed = result.output.split("Unconfirmed rates")[1].split("derived or added")[0]
    assert unconfirmed.count("cache_read_input_token_cost_batches") == len(UNCONFIRMED)
    assert "gpt-5 " not in unconfirmed


def test_prices_command_for_one_model(wide):
    result = CliRunner().invoke(cli_module.cli, ["prices", "--model", "claude-opus-4-5"])
    assert result.exit_code == 0, result.output
    live, batch = [[c.strip() for c in line.split("│") if c.strip()]
                   for line in result.output.splitlines()
                   if line.startswith("│ claude-opus-4-5 ")][:2]  # the live and batch tables
    assert live == ["claude-opus-4-5", "5", "25", "0.5", "6.25", "10"]
    assert batch == ["claude-opus-4-5", "2.5", "12.5", "0.25", "3.125", "5"]
    assert "No unconfirmed rates" in result.output
    rows = [line for line in CliRunner().invoke(
        cli_module.cli, ["prices", "--model", "gpt-4o"]).output.splitlines()
        if line.startswith("│ gpt-4o ")]
    assert "1.25*" not in rows[0] and "1.25*" in rows[1]  # live cached confirmed, batch not


def test_prices_command_reads_another_table_and_names_a_missing_model(wide, tmp_path):
    path = write_table(tmp_path / "litellm.json", {"gpt-4o-mini": litellm_entry()})
    result = CliRunner().invoke(cli_module.cli, ["prices", "--table", str(path),
                                                 "--model", "gpt-4o-mini"])
    assert result.exit_code == 0, result.output
    assert "0.15" in result.output and "0.075*" in result.output
    missing = CliRunner().invoke(cli_module.cli, ["prices", "--table", str(path),
                                                  "--model", "gpt-9"])
    assert isinstance(missing.exception, ConfigurationError)


# --- the integer path used for every collected answer ------------------------------------


USAGES = [Usage(), Usage(input_tokens=1), Usage(input_tokens=137, output_tokens=18),
          Usage(input_tokens=90_000, cached_input_tokens=31_337, output_tokens=4_097,
                reasoning_tokens=1_000)]


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_cost_in_picodollars_equals_the_exact_decimal_cost(prices, model):
    price = prices.price(model)
    writes = [Usage(input_tokens=10, cache_write_tokens=2_048, cache_write_1h_tokens=4_096,
                    output_tokens=7)] if price.live.cache_write_1h is not None else []
    for lane in Lane:
        for usage in USAGES + writes:
            assert prices.cost_picodollars(model, usage, lane) == \
                to_picodollars(prices.cost_usd(model, usage, lane)), (lane, usage)


def test_cost_in_picodollars_falls_back_to_decimals_for_a_fractional_rate(prices):
    import dataclasses

    price = prices.price("gpt-4o-mini")
    odd = dataclasses.replace(price, batch=dataclasses.replace(
        price.batch, input=Decimal("0.0000000000015")))  # 1.5 picodollars a token
    usage = Usage(input_tokens=3, output_tokens=1)
    assert odd.cost_picodollars(usage, Lane.BATCH) == to_picodollars(
        odd.cost_usd(usage, Lane.BATCH)) == 4 + 300_000  # 4.5 rounds half to even
    assert odd.cost_picodollars(usage, Lane.LIVE) == price.cost_picodollars(usage, Lane.LIVE)
    with pytest.raises(UnpricedUsageError):
        prices.cost_picodollars("gpt-4o-mini", Usage(cache_write_1h_tokens=5), Lane.BATCH)


def test_the_results_cost_column_is_the_exact_picodollars():
    from lanewise.batch.results import _usd_column
    from lanewise.pricing import from_picodollars

    values = [0, 1, 16_725_000, 999_999_999_999, 10**18, 2**62, -5]
    column = _usd_column(values)
    assert str(column.type) == "decimal128(24, 12)"
    assert column.to_pylist() == [from_picodollars(v) for v in values]

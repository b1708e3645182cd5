"""Unit tests of the answer rules, the token rule and pricing (no server)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from lanewise.emulator.answers import choose_enum, instance_of, subject_text, summarize
from lanewise.errors import ConfigurationError
from lanewise.pricing import Lane, Usage, from_picodollars, load_price_table, to_picodollars
from lanewise.settings import get_settings
from lanewise.tokens import content_text, count_prompt_tokens, count_text_tokens

TOPICS = ["billing", "login", "export", "bug", "feature_request", "account", "other"]


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("I was charged twice for March", "billing"),
        ("Password reset link never arrives", "login"),
        ("Exporting to CSV gives an empty file; the export button is grey", "export"),
        ("Please add an integration with Slack, would be nice", "feature_request"),
        ("Hello, a question about nothing in particular", "other"),
    ],
)
def test_enum_is_chosen_by_words_of_the_input(text, topic):
    assert choose_enum(TOPICS, text) == topic


def test_enum_falls_back_to_neutral_then_first():
    assert choose_enum(["positive", "neutral", "negative"], "a plain note") == "neutral"
    assert choose_enum(["alpha", "beta"], "a plain note") == "alpha"


def test_schema_instance_is_valid_and_deterministic():
    schema = {"type": "object", "$defs": {"lvl": {"enum": ["low", "high"]}},
              "properties": {"level": {"$ref": "#/$defs/lvl"},
                             "n": {"type": "integer", "minimum": 3, "maximum": 5},
                             "flag": {"type": "boolean"},
                             "maybe": {"anyOf": [{"type": "null"}, {"type": "string",
                                                                    "maxLength": 5}]},
                             "const": {"const": 1}}}
    value = instance_of(schema, "urgent: site is down")
    assert value["level"] == "high" and 3 <= value["n"] <= 5
    assert isinstance(value["flag"], bool) and len(value["maybe"]) <= 5 and value["const"] == 1
    assert instance_of(schema, "urgent: site is down") == value


def test_subject_is_what_follows_the_first_blank_line_of_the_last_user_message():
    messages = [{"role": "user", "content": "old"}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": "Classify billing or login.\n\nMy card failed."}]
    assert subject_text(messages, content_text) == "My card failed."
    assert subject_text([{"role": "user", "content": "just this"}], content_text) == "just this"


def test_summary_keeps_whole_first_sentences():
    text = "First one here. " + "Second sentence is rather long and wordy. " * 10
    summary = summarize(text, max_words=12)
    assert summary.startswith("First one here.") and len(summary.split()) <= 12


def test_token_rule():
    assert count_text_tokens("") == 0
    assert count_text_tokens("abcd") == 1 and count_text_tokens("abcde") == 2
    messages = [{"role": "user", "content": "abcdefgh"}]
    assert count_prompt_tokens(messages) == 3 + 3 + 2
    assert count_prompt_tokens(messages, system="abcd") == 3 + 3 + 1 + 3 + 2
    blocks = [{"type": "text", "text": "abcd"}, {"type": "text", "text": "efgh"}]
    assert content_text(blocks) == "abcd\nefgh"


def test_prices_are_exact_and_batch_is_half():
    prices = load_price_table(get_settings().prices_path)
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=0, output_tokens=1_000_000)
    live = prices.cost_usd("gpt-4o-mini", usage, Lane.LIVE)
    assert live == Decimal("0.75")
    assert prices.cost_usd("gpt-4o-mini", usage, Lane.BATCH) == live / 2
    anthropic = Usage(input_tokens=10, cached_input_tokens=100, cache_write_tokens=1000,
                      output_tokens=7)
    cost = prices.cost_usd("claude-sonnet-4-5", anthropic, Lane.BATCH)
    assert cost == (Decimal(10) * Decimal("1.5") + 100 * Decimal("0.15")
                    + 1000 * Decimal("1.875") + 7 * Decimal("7.5")) / 1_000_000
    assert from_picodollars(to_picodollars(cost)) == cost


def test_openai_usage_excludes_cached_from_input():
    usage = Usage.from_openai({"prompt_tokens": 2000, "completion_tokens": 5,
                               "prompt_tokens_details": {"cached_tokens": 1536}})
    assert usage.input_tokens == 464 and usage.cached_input_tokens == 1536


def test_unknown_model_names_the_known_ones():
    prices = load_price_table(get_settings().prices_path)
    with pytest.raises(ConfigurationError, match="gpt-4o-mini"):
        prices.price("gpt-9")

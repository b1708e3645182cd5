"""Adapters over the official SDKs against the emulator; credentials; error translation."""

from __future__ import annotations

import anthropic
import openai
import pytest
from pydantic import SecretStr

from lanewise.catalog import load_catalog
from lanewise.errors import MissingCredentialsError, PermanentProviderError, TransientProviderError
from lanewise.inputs import InputRow
from lanewise.providers import get_adapter, resolve_credentials
from lanewise.providers.anthropic_adapter import AnthropicAdapter
from lanewise.providers.openai_adapter import OpenAIAdapter
from lanewise.requests import prepare
from lanewise.settings import Settings


@pytest.fixture()
def adapters(emulator):
    return {
        "openai": OpenAIAdapter(openai.OpenAI(base_url=emulator.openai_base_url, api_key="k",
                                              max_retries=0)),
        "anthropic": AnthropicAdapter(anthropic.Anthropic(base_url=emulator.anthropic_base_url,
                                                          api_key="k", max_retries=0)),
    }


@pytest.mark.parametrize(("task", "provider"), [("ticket-tagging", "openai"),
                                                ("reply-draft", "anthropic")])
def test_live_call_through_the_adapter(adapters, task, provider):
    spec = load_catalog().get(task)
    request = prepare(spec, InputRow(1, {"ticket_id": "T", "subject": "Hi",
                                         "body": "I was charged twice."}))
    outcome = adapters[provider].live(adapters[provider].request_body(spec, request))
    assert outcome.ok and outcome.usage.output_tokens > 0 and outcome.text


def test_sdk_errors_become_transient_or_permanent(adapters, control):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    control.post("/faults/next", json={"status": 503, "provider": "openai"})
    with pytest.raises(TransientProviderError) as transient:
        adapters["openai"].live(body)
    assert transient.value.status_code == 503
    with pytest.raises(PermanentProviderError) as permanent:
        adapters["openai"].live({**body, "model": "gpt-unknown"})
    assert permanent.value.status_code == 404
    control.post("/faults/next", json={"status": 529, "provider": "anthropic"})
    with pytest.raises(TransientProviderError):
        adapters["anthropic"].live({"model": "claude-haiku-4-5", "max_tokens": 5,
                                    "messages": [{"role": "user", "content": "x"}]})


def test_credentials_from_environment_then_emulator_then_error(monkeypatch, emulator):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    settings = Settings(emulator_url=emulator.url)
    from_env = resolve_credentials("anthropic", settings)
    assert from_env.source == "environment" and isinstance(from_env.api_key, SecretStr)
    assert "sk-ant-from-env" not in repr(from_env)
    emulated = resolve_credentials("openai", settings)
    assert emulated.source == "emulator" and emulated.base_url == f"{emulator.url}/v1"
    assert get_adapter("openai", settings).client.batches.list(limit=1) is not None
    with pytest.raises(MissingCredentialsError, match="OPENAI_API_KEY"):
        resolve_credentials("openai", Settings(use_emulator=False))

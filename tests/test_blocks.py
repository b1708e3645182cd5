"""lanewise's Prefect blocks: described fields, registration, and how their values win."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid

import pytest

from blocks import (
    BLOCK_TYPES,
    AnthropicSettings,
    OpenAISettings,
    ProviderCredentials,
    StorageSettings,
    register_block_types,
)
from lanewise.errors import ConfigurationError, MissingCredentialsError
from lanewise.settings import REPO_ROOT, RateLimits, Settings

SETTINGS_BLOCKS = (OpenAISettings, AnthropicSettings, StorageSettings)
LANEWISE_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    """No LANEWISE_* or SDK key variables from the caller's environment."""
    import os

    for name in list(os.environ):
        if name.startswith("LANEWISE_") or name in LANEWISE_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))


def unique(prefix: str) -> str:
    """A block name no other test of the session uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_every_block_and_field_is_described():
    slugs = {block.get_block_type_slug() for block in BLOCK_TYPES}
    assert {"lanewise-openai-settings", "lanewise-anthropic-settings", "lanewise-storage",
            "lanewise-provider-credentials", "lanewise-provider-admin-key"} == slugs
    for block in BLOCK_TYPES:
        assert block.get_description(), block
        for name, field in block.model_fields.items():
            assert field.description and len(field.description) > 15, (block, name)
    for block in SETTINGS_BLOCKS:
        # The precedence is documented where the UI and `help()` show it.
        assert "Precedence" in block.__doc__ and "wins" in block.__doc__
        # Every field maps onto a real setting, described there too.
        assert set(block.SETTINGS) == set(block.model_fields)
        for target in block.SETTINGS.values():
            assert Settings.model_fields[target].description, target


def test_secret_fields_are_secret_in_the_schema():
    assert ProviderCredentials.model_json_schema()["secret_fields"] == ["api_key"]
    assert StorageSettings.model_json_schema()["secret_fields"] == ["secret"]
    for block in (OpenAISettings, AnthropicSettings):
        assert block.model_json_schema()["secret_fields"] == []


def test_storage_root_must_be_shared():
    with pytest.raises(ValueError, match="absolute folder or a URL"):
        StorageSettings(root_url="relative/folder")
    assert StorageSettings(root_url="/mnt/shared/lanewise").root_url == "/mnt/shared/lanewise"
    assert StorageSettings(root_url="s3://bucket/prefix").root_url == "s3://bucket/prefix"


def test_no_block_named_reads_nothing_and_imports_no_prefect(tmp_path):
    """`lanewise runs` and `--help` build settings: with no block named, no Prefect."""
    code = ("import sys; from lanewise.settings import Settings; "
            "s = Settings(home=sys.argv[1]).with_blocks(); "
            "assert s.with_blocks() is s; "
            "assert 'prefect' not in sys.modules, 'prefect imported'; "
            "assert 'blocks' not in sys.modules, 'blocks imported'")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_rate_limits_and_default_models_from_the_environment(clean_env, monkeypatch):
    monkeypatch.setenv("LANEWISE_OPENAI_REQUESTS_PER_MINUTE", "500")
    monkeypatch.setenv("LANEWISE_ANTHROPIC_OUTPUT_TOKENS_PER_MINUTE", "8000")
    monkeypatch.setenv("LANEWISE_ANTHROPIC_DEFAULT_MODEL", "claude-sonnet-4-5")
    settings = Settings()
    assert settings.rate_limits("openai") == RateLimits(500, None, None, 8)
    assert settings.rate_limits("anthropic") == RateLimits(None, None, 8000, 8)
    assert settings.default_model("openai") == "gpt-4o-mini"
    assert settings.default_model("anthropic") == "claude-sonnet-4-5"


@pytest.mark.prefect
def test_register_block_types_registers_every_type(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client:
        for block in BLOCK_TYPES:  # start from a server that does not know them
            try:
                client.delete_block_type(
                    client.read_block_type_by_slug(block.get_block_type_slug()).id)
            except ObjectNotFound:
                pass
        slugs = register_block_types(api_url=PREFECT_API_URL.value())
        assert register_block_types() == slugs  # idempotent
        for block in BLOCK_TYPES:
            block_type = client.read_block_type_by_slug(block.get_block_type_slug())
            assert block_type.description == block.get_description()
            schemas = client.read_block_schemas()
            fields = next(s.fields for s in schemas if s.block_type_id == block_type.id
                          and s.checksum == block._calculate_schema_checksum())
            for name in block.model_fields:
                assert fields["properties"][name]["description"], (block, name)
    assert set(slugs) == {block.get_block_type_slug() for block in BLOCK_TYPES}


@pytest.mark.prefect
def test_settings_blocks_win_and_the_environment_fills_the_rest(prefect_harness, clean_env,
                                                                 monkeypatch):
    openai_name, anthropic_name, storage_name = (unique("oai"), unique("ant"), unique("st"))
    OpenAISettings(default_model="gpt-4.1-mini", requests_per_minute=3000,
                   enqueued_token_budget=90_000, enqueued_token_budgets={"gpt-4o": 1234},
                   base_url="https://gateway.example/v1").save(openai_name)
    AnthropicSettings(max_concurrency=3).save(anthropic_name)
    StorageSettings(root_url="s3://team-bucket/lanewise", endpoint_url="http://minio:9000",
                    key_id="AKIDEXAMPLE", secret="s3-secret-value").save(storage_name)
    monkeypatch.setenv("LANEWISE_OPENAI_DEFAULT_MODEL", "gpt-from-env")
    monkeypatch.setenv("LANEWISE_OPENAI_REQUESTS_PER_MINUTE", "7")
    monkeypatch.setenv("LANEWISE_OPENAI_TOKENS_PER_MINUTE", "150000")
    monkeypatch.setenv("LANEWISE_ANTHROPIC_BASE_URL", "https://anthropic-proxy.example")
    monkeypatch.setenv("LANEWISE_STORAGE_ROOT", "/srv/env-root")
    monkeypatch.setenv("LANEWISE_STORAGE_SECRET", "env-secret")

    plain = Settings()
    assert plain.default_model("openai") == "gpt-from-env"
    assert plain.storage_options() == {}  # a folder root takes no S3 options

    monkeypatch.setenv("LANEWISE_OPENAI_SETTINGS_BLOCK", openai_name)
    monkeypatch.setenv("LANEWISE_ANTHROPIC_SETTINGS_BLOCK", anthropic_name)
    monkeypatch.setenv("LANEWISE_STORAGE_BLOCK", storage_name)
    resolved = Settings().with_blocks()
    # set in the block: the block's value
    assert resolved.default_model("openai") == "gpt-4.1-mini"
    assert resolved.rate_limits("openai") == RateLimits(3000, 150_000, None, 8)
    assert resolved.openai_enqueued_token_budget == 90_000
    assert resolved.enqueued_token_budgets == {"gpt-4o": 1234}
    assert resolved.openai_base_url == "https://gateway.example/v1"
    assert resolved.rate_limits("anthropic").max_concurrency == 3
    # left empty in the block: the environment's, then the default
    assert resolved.anthropic_base_url == "https://anthropic-proxy.example"
    assert resolved.default_model("anthropic") == "claude-haiku-4-5"
    assert resolved.resolved_storage_root == "s3://team-bucket/lanewise"
    assert resolved.storage_options() == {"endpoint_url": "http://minio:9000",
                                          "key": "AKIDEXAMPLE", "secret": "s3-secret-value"}
    assert resolved.with_blocks() is resolved  # loaded once

    # What the UI and the API show of a saved block: the secret obfuscated.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        shown = client.read_block_document_by_name(storage_name, "lanewise-storage",
                                                   include_secrets=False)
    assert shown.data["key_id"] == "AKIDEXAMPLE"
    assert shown.data["secret"] != "s3-secret-value" and "s3-secret" not in str(shown)


@pytest.mark.prefect
def test_base_url_precedence_reaches_the_sdk(prefect_harness, emulator, clean_env,
                                             monkeypatch):
    from lanewise.providers import get_adapter, resolve_credentials

    settings_name, creds_name = unique("oai"), unique("creds")
    OpenAISettings(base_url=emulator.openai_base_url).save(settings_name)
    monkeypatch.setenv("LANEWISE_OPENAI_API_KEY", "sk-env-key")
    monkeypatch.setenv("LANEWISE_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing there
    monkeypatch.setenv("LANEWISE_OPENAI_SETTINGS_BLOCK", settings_name)
    creds = resolve_credentials("openai", Settings())
    assert (creds.source, creds.base_url) == ("environment", emulator.openai_base_url)
    # The SDK really goes there: the emulator answers (port 9 would refuse).
    assert get_adapter("openai", Settings()).client.batches.list(limit=1) is not None

    ProviderCredentials(provider="openai", api_key="sk-block-key").save(creds_name)
    monkeypatch.setenv("LANEWISE_OPENAI_CREDENTIALS_BLOCK", creds_name)
    creds = resolve_credentials("openai", Settings())
    assert creds.source == "block" and creds.api_key.get_secret_value() == "sk-block-key"
    assert creds.base_url == emulator.openai_base_url  # the block has none: settings block's
    ProviderCredentials(provider="openai", api_key="sk-block-key",
                        base_url="https://own.example/v1").save(creds_name, overwrite=True)
    assert resolve_credentials("openai", Settings()).base_url == "https://own.example/v1"


@pytest.mark.prefect
def test_block_problems_are_configuration_errors_that_say_what_to_do(prefect_harness,
                                                                     clean_env, monkeypatch):
    from lanewise.providers import resolve_credentials

    monkeypatch.setenv("LANEWISE_OPENAI_CREDENTIALS_BLOCK", "no-such-block")
    with pytest.raises(ConfigurationError, match=r"cannot load the lanewise-provider-"
                       r"credentials block 'no-such-block' \(named by LANEWISE_OPENAI_"
                       r"CREDENTIALS_BLOCK\).*ProviderCredentials\(\.\.\.\)\.save"):
        resolve_credentials("openai", Settings())

    wrong = unique("ant-key")
    ProviderCredentials(provider="anthropic", api_key="sk-ant-x").save(wrong)
    monkeypatch.setenv("LANEWISE_OPENAI_CREDENTIALS_BLOCK", wrong)
    with pytest.raises(ConfigurationError, match="holds a key for anthropic, not openai"):
        resolve_credentials("openai", Settings())

    monkeypatch.setenv("LANEWISE_STORAGE_BLOCK", "missing-storage")
    with pytest.raises(ConfigurationError, match="lanewise-storage block 'missing-storage'"):
        Settings().with_blocks()


def test_a_missing_key_says_how_to_set_one(clean_env):
    from lanewise.providers import resolve_credentials

    for provider, env in (("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")):
        with pytest.raises(MissingCredentialsError) as caught:
            resolve_credentials(provider, Settings(use_emulator=False))
        message = str(caught.value)
        assert env in message and "lanewise-provider-credentials" in message
        assert f"LANEWISE_{provider.upper()}_CREDENTIALS_BLOCK" in message


@pytest.fixture()
def moto_s3():
    """A real S3 endpoint: moto's standalone server on a free port."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.mark.prefect
def test_storage_block_reaches_an_s3_endpoint(prefect_harness, clean_env, emulator,
                                              moto_s3, monkeypatch):
    import boto3

    from lanewise.batch.context import LaneContext

    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1",
                      aws_access_key_id="AKIDLANEWISE", aws_secret_access_key="s3-secret")
    s3.create_bucket(Bucket="team-bucket")
    name = unique("s3")
    StorageSettings(root_url="s3://team-bucket/lanewise", endpoint_url=moto_s3,
                    key_id="AKIDLANEWISE", secret="s3-secret").save(name)
    monkeypatch.setenv("LANEWISE_STORAGE_BLOCK", name)
    monkeypatch.setenv("LANEWISE_EMULATOR_URL", emulator.url)
    # No AWS credentials anywhere else: only the block's can have signed the requests.
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")

    ctx = LaneContext.build("ticket-tagging", Settings())
    url = ctx.storage.url("runs", "probe.txt")
    assert url == "s3://team-bucket/lanewise/runs/probe.txt"
    with ctx.storage.open(url, "wb") as handle:
        handle.write(b"written through the storage block")
    body = s3.get_object(Bucket="team-bucket", Key="lanewise/runs/probe.txt")["Body"].read()
    assert body == b"written through the storage block"
    assert ctx.storage.fs.key == "AKIDLANEWISE" and ctx.storage.fs.secret == "s3-secret"

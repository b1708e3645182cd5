"""Keys never reach logs, artifacts, JSONL files, results, the ledger or error messages.

Distinctive fake keys are planted in the credentials blocks, the storage block and
the environment; real batch runs go through the Prefect flow against the emulator
(which accepts any key), including runs that fail on a provider error and on a block
that does not validate; then everything the runs wrote is scanned for the keys.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from datetime import date
from typing import Any

import pytest

from lanewise.settings import Settings, get_settings
from tests.lane_helpers import sample_input
from tests.leak_scan import (
    KEYS,
    WATCHED_LOGGERS,
    Capture,
    Findings,
    leaks,
    save_corrupt_credentials,
    scan_everything,
    scan_files,
    scan_ledger,
)

pytestmark = pytest.mark.prefect


@pytest.fixture()
def capture_logs():
    """Capture the watched loggers at DEBUG for the test (SDK and HTTP debug logs too)."""
    handler = Capture()
    levels = {}
    for name in WATCHED_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if name and not name.startswith("prefect"):
            levels[name] = logger.level
            logger.setLevel(logging.DEBUG)
    yield handler
    for name in WATCHED_LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture()
def planted(prefect_harness, emulator, tmp_path, monkeypatch):
    """Keys planted in blocks and the environment; home and storage root of the test."""
    from blocks import ProviderCredentials, StorageSettings
    from lanewise.batch.prefect_tasks import context_for

    suffix = uuid.uuid4().hex[:8]
    names = {"openai": f"leak-openai-{suffix}", "anthropic": f"leak-anthropic-{suffix}",
             "storage": f"leak-storage-{suffix}"}
    ProviderCredentials(provider="openai", api_key=KEYS["openai_block"],
                        base_url=emulator.openai_base_url).save(names["openai"])
    ProviderCredentials(provider="anthropic", api_key=KEYS["anthropic_block"],
                        base_url=emulator.anthropic_base_url).save(names["anthropic"])
    store = tmp_path / "store"
    StorageSettings(root_url=str(store), key_id="AKIDLEAKTEST",
                    secret=KEYS["storage_block"]).save(names["storage"])
    env = {
        "LANEWISE_HOME": str(tmp_path / "home"),
        "LANEWISE_OPENAI_CREDENTIALS_BLOCK": names["openai"],
        "LANEWISE_ANTHROPIC_CREDENTIALS_BLOCK": names["anthropic"],
        "LANEWISE_STORAGE_BLOCK": names["storage"],
        "OPENAI_API_KEY": KEYS["openai_env"], "LANEWISE_OPENAI_API_KEY": KEYS["openai_env"],
        "ANTHROPIC_API_KEY": KEYS["anthropic_env"],
        "LANEWISE_ANTHROPIC_API_KEY": KEYS["anthropic_env"],
        "LANEWISE_OPENAI_ADMIN_KEY": KEYS["openai_admin_env"],
        "LANEWISE_STORAGE_SECRET": KEYS["storage_env"],
        "LANEWISE_POLL_INITIAL_SECONDS": "0.05", "LANEWISE_POLL_MAX_SECONDS": "0.2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    context_for.cache_clear()
    yield {"home": tmp_path / "home", "store": store, "names": names}
    get_settings.cache_clear()
    context_for.cache_clear()


def nightly(task: str, input_url: str, day: date) -> Any:
    """One nightly flow run over every row of the input, with its parameters given as a
    deployment run gives them; its final state."""
    from flows.batch import nightly_batch

    return nightly_batch(params={"task": task, "input_url": input_url,
                                 "run_date": day.isoformat(), "filter_by_date": False},
                         return_state=True)


def test_planted_keys_appear_nowhere_a_run_writes(planted, emulator, tmp_path, capfd,
                                                  capture_logs, monkeypatch):
    from lanewise.batch.context import LaneContext
    from lanewise.batch.prefect_tasks import context_for
    from lanewise.emulator import Faults
    from lanewise.errors import ConfigurationError
    from lanewise.providers import resolve_credentials

    started = time.time()
    # The keys are really the ones in use: the blocks win over the environment.
    assert resolve_credentials("openai").api_key.get_secret_value() == KEYS["openai_block"]
    assert get_settings().with_blocks().storage_secret.get_secret_value() == \
        KEYS["storage_block"]
    errors: list[BaseException] = []
    states = []

    # 1. Runs that succeed, with provider errors on some requests (logged, retried,
    #    recorded as item failures) and rejected rows (validation messages).
    emulator.state.set_faults(Faults(seed=3, item_5xx_rate=0.15, item_4xx_rate=0.1))
    states.append(nightly("ticket-tagging", sample_input(tmp_path, rows=40), date(2026, 8, 1)))
    emulator.state.set_faults(Faults())
    states.append(nightly("ticket-summary", sample_input(tmp_path, rows=20), date(2026, 8, 1)))
    for state in states:
        assert state.is_completed(), state.message
    tagging = states[0].result()
    assert tagging["rows"] == 40

    # 2. A run failing on a provider error: the provider refuses the key, this time the
    #    environment's (no credentials block named; the base URL from LANEWISE_*).
    monkeypatch.delenv("LANEWISE_ANTHROPIC_CREDENTIALS_BLOCK")
    monkeypatch.setenv("LANEWISE_ANTHROPIC_BASE_URL", emulator.anthropic_base_url)
    get_settings.cache_clear()
    context_for.cache_clear()
    assert resolve_credentials("anthropic").api_key.get_secret_value() == \
        KEYS["anthropic_env"]
    emulator.state.config.api_key = "sk-the-only-key-the-provider-takes"
    try:
        # Rows not answered yet (the result cache answers those of the run above).
        fresh = tmp_path / "fresh.csv"
        fresh.write_text("ticket_id,subject,body\nF1,Refund,Please refund order 8812.\n")
        refused = nightly("ticket-summary", str(fresh), date(2026, 8, 2))
    finally:
        emulator.state.config.api_key = None
    assert refused.is_failed()
    errors.append(refused.result(raise_on_failure=False))
    assert "401" in str(errors[-1]) or "API key" in str(errors[-1]), errors[-1]
    states.append(refused)

    # 3. A run failing on a credentials block that does not validate: pydantic would
    #    print the block's whole data, key included, for its missing field.
    corrupt = f"leak-corrupt-{uuid.uuid4().hex[:8]}"
    save_corrupt_credentials(corrupt)
    monkeypatch.setenv("LANEWISE_OPENAI_CREDENTIALS_BLOCK", corrupt)
    get_settings.cache_clear()
    context_for.cache_clear()
    broken = nightly("ticket-tagging", sample_input(tmp_path, rows=40), date(2026, 8, 3))
    assert broken.is_failed()
    errors.append(broken.result(raise_on_failure=False))
    broken_message = str(errors[-1])  # checked after the scan: a leak is the first finding
    states.append(broken)
    try:  # as `lanewise run` builds it, outside a flow
        LaneContext.build("ticket-tagging")
    except Exception as exc:  # noqa: BLE001 - its type is checked after the scan
        errors.append(exc)
        outside_flow = exc
    else:
        pytest.fail("a context was built from a credentials block that does not validate")

    # 4. A run refused for its parameters (end before start): a validation message.
    from flows.batch import backfill

    monkeypatch.setenv("LANEWISE_OPENAI_CREDENTIALS_BLOCK", planted["names"]["openai"])
    get_settings.cache_clear()
    context_for.cache_clear()
    backwards = backfill(params={"task": "ticket-tagging", "start": "2026-08-05",
                                 "end": "2026-08-01", "input_url": sample_input(tmp_path)},
                         return_state=True)
    assert backwards.is_failed() and "before start" in str(backwards.message)
    errors.append(backwards.result(raise_on_failure=False))
    states.append(backwards)

    # 5. Validation errors with keys around: settings and blocks given a bad value.
    from pydantic import ValidationError

    from blocks import ProviderCredentials, StorageSettings

    monkeypatch.setenv("LANEWISE_POLL_MAX_SECONDS", "-1")
    for build in (Settings,
                  lambda: ProviderCredentials(provider="openia", api_key=KEYS["openai_block"]),
                  lambda: StorageSettings(root_url="relative", secret=KEYS["storage_block"])):
        with pytest.raises(ValidationError) as caught:
            build()
        errors.append(caught.value)
    monkeypatch.setenv("LANEWISE_POLL_MAX_SECONDS", "0.2")

    findings = scan_everything(planted, states, errors, started)
    findings.scan("flow-result", json.dumps(tagging, default=str))
    out, err = capfd.readouterr()
    findings.scan("stdout:", out)
    findings.scan("stderr:", err)
    findings.scan("python-logs:", "\n".join(capture_logs.lines))

    assert findings.found == [], "planted keys leaked:\n" + "\n".join(findings.found)
    assert "does not hold valid values (provider: Field required)" in broken_message
    assert isinstance(outside_flow, ConfigurationError), outside_flow
    # The scan saw what the runs wrote (a scan of nothing proves nothing).
    assert findings.scanned["file"] > 10 and findings.scanned["parquet"] >= 2
    assert list(planted["store"].rglob("*.jsonl")) and list(planted["store"].rglob("*.parquet"))
    assert not list(planted["home"].rglob("*.parquet"))  # the storage block's root was used
    assert {"ledger:runs", "ledger:items", "ledger:shards"} <= findings.places
    assert findings.scanned["prefect-log"] > 20 and findings.scanned["prefect-artifact"] >= 2
    assert findings.scanned["prefect-db"] >= 1
    log_text = "\n".join(log.message for log in findings.logs)
    assert "401" in log_text or "API key" in log_text  # the provider error was logged
    assert "does not hold valid values" in log_text  # so was the block's
    assert len(capture_logs.lines) > 100


def test_scanner_finds_a_key_wherever_it_is(tmp_path):
    """The scan itself: a key in a file, in a compressed Parquet cell, in a ledger row."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import sqlalchemy as sa

    folder = tmp_path / "written"
    folder.mkdir()
    pq.write_table(pa.table({"raw_text": ["x" * 5000 + KEYS["openai_env"][-30:]]}),
                   folder / "results.parquet", compression="zstd")
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE items (error TEXT)"))
        conn.execute(sa.text("INSERT INTO items VALUES (:e)"),
                     {"e": f"bad key {KEYS['anthropic_block'][-17:]}"})
    engine.dispose()
    findings = Findings()
    scan_files(findings, folder)
    scan_ledger(findings, url)
    assert any(f.startswith("parquet:") for f in findings.found)  # decoded, not raw bytes
    assert any(f.startswith("ledger:items") for f in findings.found)
    assert leaks(io.BytesIO(KEYS["storage_env"].encode()).getvalue())
    # A value shortened as pydantic shows it in a validation error is still found.
    key = KEYS["corrupt_block"]
    assert leaks(f"input_value={{'api_key': '{key[:12]}...{key[-20:]}'}}")


def test_settings_and_blocks_show_secrets_masked(monkeypatch):
    from blocks import ProviderAdminKey, ProviderCredentials, StorageSettings
    from lanewise.providers import Credentials

    for var, key in (("LANEWISE_OPENAI_API_KEY", "openai_env"),
                     ("LANEWISE_ANTHROPIC_API_KEY", "anthropic_env"),
                     ("LANEWISE_OPENAI_ADMIN_KEY", "openai_admin_env"),
                     ("LANEWISE_STORAGE_SECRET", "storage_env")):
        monkeypatch.setenv(var, KEYS[key])
    settings = Settings(storage_root="s3://bucket/prefix")
    assert settings.storage_options()["secret"] == KEYS["storage_env"]  # still usable
    shown = [repr(settings), str(settings), settings.model_dump_json(),
             json.dumps(settings.model_dump(mode="json"))]
    blocks = [ProviderCredentials(provider="openai", api_key=KEYS["openai_block"]),
              ProviderAdminKey(provider="openai", admin_key=KEYS["openai_admin_env"]),
              StorageSettings(root_url="s3://bucket/prefix", secret=KEYS["storage_block"])]
    for block in blocks:
        shown += [repr(block), str(block), block.model_dump_json(),
                  json.dumps(block.model_dump(mode="json"))]
    creds = Credentials(settings.openai_api_key, None, "environment")
    shown += [repr(creds), str(creds)]
    for text in shown:
        assert leaks(text) == [], text
        assert "**********" in text, text

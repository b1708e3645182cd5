"""An s3:// storage root through s3fs against a real S3 endpoint: moto's standalone
server (the `moto[server]` package), started here as its own process on a free port.

A real batch run writes its JSONL shards, raw outputs and results under
LANEWISE_STORAGE_ROOT=s3://bucket/prefix; the results are read back from S3 by another
client, `lanewise runs` shows the s3:// URL, and `runs forget` deletes a planned run's
objects. The endpoint comes the standard way (AWS_ENDPOINT_URL, which botocore and so
s3fs honour) or from lanewise's own settings (LANEWISE_STORAGE_ENDPOINT_URL and keys).
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time

import boto3
import pyarrow.parquet as pq
import pytest

from lanewise.batch.planning import open_run
from lanewise.batch.runner import run_batch_lane
from tests.history_helpers import invoke
from tests.lane_helpers import make_context, sample_input

BUCKET = "lanewise-team"
PREFIX = "shared/lanewise"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server in its own process; its URL. Stopped (SIGTERM) after the module."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, **_boto_keys())
    deadline = time.monotonic() + 60
    while True:
        try:
            client.list_buckets()
            break
        except Exception:  # noqa: BLE001 - not listening yet
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.2)
    client.create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # its clients point at this server
        process.terminate()
        process.wait(timeout=30)


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
            "region_name": "us-east-1"}


def _objects(endpoint: str, prefix: str) -> dict[str, int]:
    """{key: size} of the bucket's objects under `prefix`, read by a separate client."""
    client = boto3.client("s3", endpoint_url=endpoint, **_boto_keys())
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture()
def s3_env(s3_endpoint, monkeypatch, tmp_path):
    """The process environment of a team member using the S3 root: the endpoint from
    AWS_ENDPOINT_URL, keys from AWS_* variables, the root from LANEWISE_STORAGE_ROOT."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    root = f"s3://{BUCKET}/{PREFIX}/{tmp_path.name}"
    env = {**KEYS, "AWS_ENDPOINT_URL": s3_endpoint, "LANEWISE_STORAGE_ROOT": root}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("LANEWISE_STORAGE_ENDPOINT_URL", "LANEWISE_STORAGE_KEY_ID",
                 "LANEWISE_STORAGE_SECRET", "LANEWISE_STORAGE_BLOCK"):
        monkeypatch.delenv(name, raising=False)
    return {**env, "root": root, "prefix": f"{PREFIX}/{tmp_path.name}"}


def test_a_batch_run_writes_and_reads_its_files_on_s3(emulator, tmp_path, s3_env,
                                                      s3_endpoint):
    import pandas as pd

    ctx = make_context("ticket-tagging", emulator, tmp_path)
    assert ctx.storage.protocol in ("s3", "s3a") and ctx.storage.root_url == s3_env["root"]
    summary = run_batch_lane(ctx, "tagging:s3", sample_input(tmp_path, rows=20))
    assert summary.results_url == f"{s3_env['root']}/runs/tagging_s3/results.parquet"

    # Read back from S3 by a plain boto3 client: every row of the input is there.
    objects = _objects(s3_endpoint, s3_env["prefix"])
    results_key = summary.results_url.removeprefix(f"s3://{BUCKET}/")
    assert objects[results_key] > 0
    body = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_keys()).get_object(
        Bucket=BUCKET, Key=results_key)["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert sorted(table.column("row_number").to_pylist()) == list(range(1, 21))
    assert set(table.column("status").to_pylist()) <= {"succeeded", "rejected", "failed",
                                                        "invalid_output"}
    # The JSONL sent and the provider's raw outputs are there too; no partial file left.
    shard_urls = [s["jsonl_url"] for s in ctx.ledger.shards(
        ctx.ledger.run_by_key("tagging:s3")["id"])]
    for url in shard_urls:
        key = url.removeprefix(f"s3://{BUCKET}/")
        assert url.startswith("s3://") and objects[key] > 0
        assert objects[key.removesuffix(".jsonl") + ".results.jsonl"] > 0
    assert not [k for k in objects if k.endswith(".partial")]
    # A team member opens the URL as shown, with pandas (s3fs, the same endpoint).
    frame = pd.read_parquet(summary.results_url)
    assert len(frame) == 20 and (frame["cost_usd"] > 0).any()

    # `lanewise runs` shows the s3:// URL, in the table and the JSON.
    env = {"LANEWISE_DATABASE_URL": ctx.settings.resolved_database_url}
    records = json.loads(invoke(["runs", "--json"], env).output)
    assert records[0]["results_url"] == summary.results_url
    assert f"results {summary.results_url}" in invoke(["runs"], env, width=200).output


def test_forget_deletes_a_planned_runs_objects_on_s3(emulator, tmp_path, s3_env,
                                                     s3_endpoint):
    ctx = make_context("ticket-summary", emulator, tmp_path)
    ctx.token_budget = 1500
    run_id = open_run(ctx, "summary:s3-forget", sample_input(tmp_path, rows=30))
    planned = [s["jsonl_url"] for s in ctx.ledger.shards(run_id)]
    run_prefix = f"{s3_env['prefix']}/runs/summary_s3-forget/"
    assert len(planned) > 1 and len(_objects(s3_endpoint, run_prefix)) == len(planned)

    result = invoke(["runs", "forget", "summary:s3-forget"],
                    {"LANEWISE_DATABASE_URL": ctx.settings.resolved_database_url})
    assert result.exit_code == 0, result.output
    assert f"{len(planned)} file(s) removed" in result.output
    assert _objects(s3_endpoint, run_prefix) == {}
    assert ctx.ledger.run_by_key("summary:s3-forget") is None


def test_s3_endpoint_and_keys_from_lanewise_settings(s3_endpoint, monkeypatch, tmp_path):
    """Without any AWS_* variable: the endpoint and keys of LANEWISE_STORAGE_* reach
    s3fs through Settings.storage_options()."""
    import s3fs

    from lanewise.settings import Settings
    from lanewise.storage import Storage

    s3fs.S3FileSystem.clear_instance_cache()
    for name in (*KEYS, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "LANEWISE_STORAGE_BLOCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    settings = Settings(home=tmp_path, storage_root=f"s3://{BUCKET}/{PREFIX}/settings",
                        storage_endpoint_url=s3_endpoint, storage_key_id="testing",
                        storage_secret="testing")
    storage = Storage(settings.resolved_storage_root, **settings.storage_options())
    url = storage.url("runs", "k", "results.parquet")
    assert url == f"s3://{BUCKET}/{PREFIX}/settings/runs/k/results.parquet"
    with storage.open(url, "wb") as handle:
        handle.write(b"written through the settings' endpoint")
    assert storage.exists(url)
    assert _objects(s3_endpoint, f"{PREFIX}/settings/") == {
        f"{PREFIX}/settings/runs/k/results.parquet": 38}
    storage.replace(url, url + ".moved")
    assert not storage.exists(url) and storage.exists(url + ".moved")

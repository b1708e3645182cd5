"""`lanewise serve` (lanewise/service) through the official SDKs and the emulator: the
bearer token, input refused by field, unknown tasks, a live call whose recorded cost is
what the emulator billed, a deferred call's handle, the idempotent queue read back by
id, the OpenAPI document, and one real uvicorn process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from lanewise.batch.context import LaneContext
from lanewise.batch.drain import drain_task
from lanewise.emulator import Faults
from lanewise.errors import ConfigurationError
from lanewise.ledger import Ledger
from lanewise.service.app import create_app
from lanewise.service.auth import service_token
from tests.chaos_harness import free_port
from tests.live_helpers import (
    billed_live,
    live_settings,
    recorded,
    recorded_cost,
    ticket,
    write_catalog,
)

TOKEN = "svc-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KNOWN = ["escalation-summary", "faq-candidates", "reply-draft", "ticket-summary",
         "ticket-tagging", "urgent-triage", "weekly-digest"]


@pytest.fixture()
def serve(emulator, tmp_path):
    """`serve(check, **settings)`: run the coroutine `check(client)` against a new app
    (its lifespan included) on the test emulator, with an AsyncClient over ASGI."""

    def run(check: Any, **fields: Any) -> Any:
        settings = live_settings(tmp_path, emulator, **{"service_token": TOKEN, **fields})
        app = create_app(settings)

        async def main() -> Any:
            async with app.router.lifespan_context(app):
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                             base_url="http://lanewise") as client:
                    return await check(client)

        return asyncio.run(main())

    return run


def engine_of(tmp_path: Path) -> sa.Engine:
    """The ledger the service's settings (live_settings) point at."""
    return sa.create_engine(f"sqlite:///{(tmp_path / 'home' / 'ledger.sqlite3').resolve()}")


def drain(task: str, emulator, tmp_path: Path, catalog: Path | None = None) -> None:
    """Drain `task`'s queue through the batch lane, on the service's ledger."""
    fields = {"catalog_path": catalog} if catalog else {}
    settings = live_settings(tmp_path, emulator, poll_initial_seconds=0.05,
                             poll_max_seconds=0.2, **fields)
    ledger = Ledger(settings.resolved_database_url)
    try:
        report = drain_task(LaneContext.build(task, settings, ledger=ledger))
        assert report.runs, report.line()
    finally:
        ledger.engine.dispose()


def test_no_token_no_service(tmp_path, emulator):
    with pytest.raises(ConfigurationError) as missing:
        create_app(live_settings(tmp_path, emulator))
    message = str(missing.value)
    assert "LANEWISE_SERVICE_TOKEN" in message and "LANEWISE_SERVICE_TOKEN_BLOCK" in message
    with pytest.raises(ConfigurationError, match="too short") as short:
        service_token(live_settings(tmp_path, emulator, service_token="hunter2"))
    assert "hunter2" not in str(short.value)
    # The command says the same and exits, before building anything.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANEWISE_")}
    done = subprocess.run([sys.executable, "-m", "lanewise", "serve", "--port", "0"],
                          env={**env, "LANEWISE_HOME": str(tmp_path / "cli-home")},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "LANEWISE_SERVICE_TOKEN" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "cli-home" / "ledger.sqlite3").exists()


def test_requests_without_the_right_token_get_401(serve, emulator):
    since = time.time()

    async def check(client: httpx.AsyncClient) -> None:
        body = {"row": ticket(1)}
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            for method, path, payload in (
                    ("POST", "/v1/tasks/reply-draft/call", body),
                    ("POST", "/v1/tasks/reply-draft/enqueue", body),
                    ("GET", "/v1/requests/1", None), ("GET", "/v1/tasks", None),
                    ("POST", "/v1/tasks/no-such-task/call", body)):
                answer = await client.request(method, path, json=payload, headers=headers)
                assert answer.status_code == 401, (headers, path, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
                assert TOKEN not in answer.text
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert (await client.get("/v1/tasks", headers=AUTH)).status_code == 200

    serve(check)
    assert billed_live(emulator, since)[0] == 0  # nothing was called


def test_bad_input_is_a_422_naming_the_field(serve, emulator, tmp_path):
    since = time.time()

    async def check(client: httpx.AsyncClient) -> list[dict[str, Any]]:
        async def refused(path: str, payload: Any) -> list[list[Any]]:
            answer = await client.post(path, json=payload, headers=AUTH)
            assert answer.status_code == 422, (payload, answer.text)
            return [error["loc"] for error in answer.json()["detail"]]

        call = "/v1/tasks/ticket-tagging/call"
        row = ticket(1)
        # The task's prompt uses {subject} and {body}: a row without them is refused.
        assert await refused(call, {"row": {"ticket_id": "T-1"}}) == [
            ["body", "row", "body"], ["body", "row", "subject"]]
        assert await refused(call, {"row": {"subject": "s", "body": "b"}}) == [
            ["body", "row", "ticket_id"]]
        assert await refused(call, {"row": {**row, "body": "   "}}) == [["body", "row", "body"]]
        assert await refused(call, {"row": "not an object"}) == [["body", "row"]]
        assert await refused(call, {}) == [["body", "row"]]
        assert await refused(call, {"rows": [row]}) == [["body", "row"], ["body", "rows"]]
        assert await refused(call, {"row": row, "context": "x"}) == [["body", "context"]]
        enqueue = "/v1/tasks/ticket-tagging/enqueue"
        assert await refused(enqueue, {"key": "T-2", "row": row}) == [
            ["body", "row", "ticket_id"]]  # the row's key is T-1, not T-2
        assert await refused(enqueue, {"key": "", "row": row}) == [["body", "key"]]
        bad_id = await client.get("/v1/requests/abc", headers=AUTH)
        assert bad_id.status_code == 422
        assert bad_id.json()["detail"][0]["loc"] == ["path", "request_id"]
        answer = await client.post(call, json={"row": {"ticket_id": "T-1"}}, headers=AUTH)
        return answer.json()["detail"]

    detail = serve(check)
    assert "subject" in detail[1]["msg"] and detail[1]["type"] == "missing"
    assert billed_live(emulator, since)[0] == 0
    with engine_of(tmp_path).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM queue_items")).scalar_one() == 0


def test_a_task_not_in_the_catalog_is_a_404_naming_the_known_tasks(serve):
    async def check(client: httpx.AsyncClient) -> None:
        for path, payload in (("/v1/tasks/reply-drafts/call", {"row": ticket(1)}),
                              ("/v1/tasks/reply-drafts/enqueue", {"row": ticket(1)}),
                              ("/v1/tasks/reply-drafts/call", {"row": "bad"})):
            answer = await client.post(path, json=payload, headers=AUTH)
            assert answer.status_code == 404, answer.text
            body = answer.json()
            assert body["known_tasks"] == KNOWN
            assert "reply-drafts" in body["detail"]
            assert all(name in body["detail"] for name in KNOWN)
        missing = await client.get("/v1/requests/424242", headers=AUTH)
        assert missing.status_code == 404 and "424242" in missing.json()["detail"]
        tasks = (await client.get("/v1/tasks", headers=AUTH)).json()
        assert [t["name"] for t in tasks] == KNOWN
        tagging = next(t for t in tasks if t["name"] == "ticket-tagging")
        assert tagging["columns"] == ["body", "subject"] and tagging["key_column"] == "ticket_id"

    serve(check)


def test_a_live_call_answers_and_records_what_the_emulator_billed(serve, emulator, tmp_path,
                                                                  monkeypatch):
    from lanewise.live import lane as lane_module

    made: list[tuple[str, bool]] = []  # every SDK client the live lane builds

    def counting_client(provider: str, creds: Any, *, asynchronous: bool = False) -> Any:
        made.append((provider, asynchronous))
        return real_client(provider, creds, asynchronous=asynchronous)

    real_client = lane_module.live_client
    monkeypatch.setattr(lane_module, "live_client", counting_client)
    since = time.time()

    async def check(client: httpx.AsyncClient) -> list[dict[str, Any]]:
        # Built when the app was built (sync) and when it started (async), not per call.
        assert sorted(made) == [("anthropic", False), ("anthropic", True),
                                ("openai", False), ("openai", True)]
        draft = await client.post("/v1/tasks/reply-draft/call", headers=AUTH, json={
            "row": ticket(1), "context": {"agent": "ana", "ticket": "T-1"}})
        tags = await client.post("/v1/tasks/ticket-tagging/call", headers=AUTH,
                                 json={"row": ticket(2)})
        # The same request again: answered from the cache, nothing paid.
        again = await client.post("/v1/tasks/ticket-tagging/call", headers=AUTH,
                                  json={"row": ticket(2)})
        assert [a.status_code for a in (draft, tags, again)] == [200, 200, 200]
        assert len(made) == 4  # no client built for a request
        return [draft.json(), tags.json(), again.json()]

    draft, tags, again = serve(check)
    assert (draft["status"], draft["answered_by"], draft["provider"], draft["model"]) == (
        "succeeded", "live", "anthropic", "claude-opus-4-5")
    assert draft["output"] == draft["text"] and draft["text"].strip()
    assert tags["status"] == "succeeded" and set(tags["output"]) == {
        "topic", "sentiment", "urgency"}
    assert (again["answered_by"], again["cost_usd"], again["output"]) == (
        "cache", "0", tags["output"])
    requests, billed = billed_live(emulator, since)
    engine = engine_of(tmp_path)
    assert requests == 2 and billed > 0
    assert Decimal(draft["cost_usd"]) + Decimal(tags["cost_usd"]) == billed
    assert recorded_cost(engine) == billed
    rows = recorded(engine)
    assert [r["id"] for r in rows] == [draft["call_id"], tags["call_id"], again["call_id"]]
    assert json.loads(rows[0]["context"]) == {"agent": "ana", "ticket": "T-1"}
    assert rows[0]["latency_ms"] == pytest.approx(draft["latency_ms"])


def test_a_deferred_call_is_a_handle_read_by_id_until_the_drain_answers(
        serve, emulator, tmp_path):
    catalog = write_catalog(tmp_path / "catalog", reply_draft={"live": {
        "latency_budget_ms": 3000, "max_attempts": 1, "fallbacks": [{"kind": "defer"}]}})
    emulator.state.set_faults(Faults(server_error_rate=1.0))  # every live call fails

    async def check(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any], str]:
        answer = await client.post("/v1/tasks/reply-draft/call", headers=AUTH,
                                   json={"row": ticket(7)})
        assert answer.status_code == 202, answer.text
        location = answer.headers["location"]
        status = await client.get(location, headers=AUTH)
        assert status.status_code == 200
        return answer.json(), status.json(), location

    handle, status, location = serve(check, catalog_path=catalog)
    assert (handle["status"], handle["answered_by"]) == ("processing", "deferred")
    assert handle["fallback_reason"] and handle["cost_usd"] == "0"
    assert location == handle["request_url"] == f"/v1/requests/{handle['queue_item_id']}"
    assert (status["id"], status["task"], status["key"], status["status"], status["done"]) == (
        handle["queue_item_id"], "reply-draft", "T-7", "queued", False)

    emulator.state.set_faults(Faults())
    drain("reply-draft", emulator, tmp_path, catalog)

    async def read(client: httpx.AsyncClient) -> dict[str, Any]:
        return (await client.get(location, headers=AUTH)).json()

    done = serve(read, catalog_path=catalog)
    assert (done["status"], done["done"]) == ("succeeded", True)
    assert done["output"] == done["output_text"] and done["output"].strip()
    assert Decimal(done["cost_usd"]) > 0 and done["run_key"].startswith("drain:reply-draft:")


def test_enqueue_is_idempotent_by_task_and_key_and_read_by_id(serve, emulator, tmp_path):
    since = time.time()
    row = {k: v for k, v in ticket(3).items() if k != "ticket_id"}

    async def enqueue(client: httpx.AsyncClient) -> list[httpx.Response]:
        path = "/v1/tasks/ticket-tagging/enqueue"
        first = await client.post(path, headers=AUTH, json={"key": "T-3", "row": row})
        again = await client.post(path, headers=AUTH, json={
            "key": "T-3", "row": {**row, "body": "A different text, same key."}})
        by_row = await client.post(path, headers=AUTH, json={"row": ticket(4)})
        other_task = await client.post("/v1/tasks/ticket-summary/enqueue", headers=AUTH,
                                       json={"key": "T-3", "row": row})
        read = await client.get(first.headers["location"], headers=AUTH)
        return [first, again, by_row, other_task, read]

    first, again, by_row, other_task, read = serve(enqueue)
    assert [r.status_code for r in (first, again, by_row, other_task, read)] == [
        201, 200, 201, 201, 200]
    item = first.json()
    assert (item["task"], item["key"], item["status"], item["created"]) == (
        "ticket-tagging", "T-3", "queued", True)
    assert again.json()["id"] == item["id"] and again.json()["created"] is False
    assert by_row.json()["key"] == "T-4" and by_row.json()["id"] != item["id"]
    assert other_task.json()["id"] not in (item["id"], by_row.json()["id"])
    assert read.json() == {k: v for k, v in item.items() if k != "created"}
    assert billed_live(emulator, since)[0] == 0  # enqueued, not called

    drain("ticket-tagging", emulator, tmp_path)

    async def read_done(client: httpx.AsyncClient) -> dict[str, Any]:
        return (await client.get(f"/v1/requests/{item['id']}", headers=AUTH)).json()

    done = serve(read_done)
    assert (done["status"], done["done"]) == ("succeeded", True)
    # The first row was kept: the second enqueue of T-3 changed nothing.
    assert set(done["output"]) == {"topic", "sentiment", "urgency"}
    with engine_of(tmp_path).connect() as conn:
        stored = conn.execute(sa.text("SELECT row FROM queue_items WHERE id = :id"),
                              {"id": item["id"]}).scalar_one()
    assert json.loads(stored)["body"] == row["body"]


def test_the_openapi_document_describes_the_routes_auth_and_errors(serve):
    async def check(client: httpx.AsyncClient) -> dict[str, Any]:
        answer = await client.get("/openapi.json")  # served without a token
        assert answer.status_code == 200
        return answer.json()

    doc = serve(check)
    # A valid OpenAPI 3.1 document (openapi-spec-validator comes in the lock with moto[server]).
    from openapi_spec_validator import validate

    validate(doc)
    assert doc["info"]["title"] == "lanewise"
    paths = doc["paths"]
    assert {p: sorted(ops) for p, ops in paths.items()} == {
        "/health": ["get"], "/v1/tasks": ["get"], "/v1/tasks/{task}/call": ["post"],
        "/v1/tasks/{task}/enqueue": ["post"], "/v1/requests/{request_id}": ["get"]}
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "LANEWISE_SERVICE_TOKEN" in scheme["description"]
    assert "security" not in paths["/health"]["get"]
    for path, ops in paths.items():
        for op in ops.values():
            if path != "/health":
                assert op["security"] == [{"bearerAuth": []}], path
                assert "401" in op["responses"], path
    call = paths["/v1/tasks/{task}/call"]["post"]
    enqueue = paths["/v1/tasks/{task}/enqueue"]["post"]
    for op in (call, enqueue):
        assert {"401", "404", "422"} <= set(op["responses"])
        assert op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"] \
            .endswith("/UnknownTask")
        assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"] \
            .endswith("/HTTPValidationError")
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
    assert {"200", "202", "502"} <= set(call["responses"])
    assert {"200", "201"} <= set(enqueue["responses"])
    assert {"401", "404", "422"} <= set(paths["/v1/requests/{request_id}"]["get"]["responses"])
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" in schemas
    request = schemas["CallRequest"]
    assert request["required"] == ["row"] and request["additionalProperties"] is False
    assert "prompt" in request["properties"]["row"]["description"]
    assert schemas["EnqueueRequest"]["properties"]["key"]["description"]
    assert set(schemas["UnknownTask"]["properties"]) == {"detail", "known_tasks"}
    assert "cost_usd" in schemas["CallResult"]["properties"]
    task_param = call["parameters"][0]
    assert (task_param["name"], task_param["in"], task_param["required"]) == (
        "task", "path", True)


def test_lanewise_serve_runs_a_real_uvicorn(emulator, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANEWISE_")}
    env.update(LANEWISE_HOME=str(tmp_path / "home"), LANEWISE_EMULATOR_URL=emulator.url,
               LANEWISE_SERVICE_TOKEN=TOKEN)
    log = tmp_path / "serve.log"
    since = time.time()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lanewise", "serve", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.post("/v1/tasks/reply-draft/call",
                               json={"row": ticket(9)}).status_code == 401
            answer = client.post("/v1/tasks/reply-draft/call", json={"row": ticket(9)},
                                 headers=AUTH)
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "succeeded"
            assert "/v1/tasks/{task}/call" in client.get("/openapi.json").json()["paths"]
        assert billed_live(emulator, since) == (1, Decimal(answer.json()["cost_usd"]))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = log.read_text()
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output and "Application shutdown complete" in output
    assert TOKEN not in output


@pytest.mark.prefect
def test_the_token_may_come_from_a_prefect_secret_block(prefect_harness, serve, tmp_path,
                                                        emulator):
    from prefect.blocks.system import Secret

    block_token = "block-token-0123456789abcdef"
    Secret(value=block_token).save("lanewise-service-token-test", overwrite=True)
    settings = live_settings(tmp_path, emulator, service_token=TOKEN,
                             service_token_block="lanewise-service-token-test")
    assert service_token(settings) == block_token  # the block wins over the environment

    async def check(client: httpx.AsyncClient) -> list[int]:
        return [(await client.get("/v1/tasks", headers={"Authorization": f"Bearer {t}"}))
                .status_code for t in (block_token, TOKEN)]

    assert serve(check, service_token_block="lanewise-service-token-test") == [200, 401]
    with pytest.raises(ConfigurationError, match="no-such-block") as missing:
        service_token(live_settings(tmp_path, emulator,
                                    service_token_block="no-such-block"))
    assert "LANEWISE_SERVICE_TOKEN_BLOCK" in str(missing.value)

"""`lanewise serve`: the HTTP service over the live lane and the queue (lanewise/service).

Kept apart from cli.py, which registers it; FastAPI, uvicorn and the SDKs are imported
when the command runs, so `lanewise --help` stays cheap.
"""

from __future__ import annotations

import click
from rich.console import Console

console = Console(stderr=True)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; put TLS in front).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info",
                                                "debug"]), default="info", show_default=True,
              help="uvicorn's log level (access lines at info).")
def serve(host: str, port: int, log_level: str) -> None:
    """Serve the live lane and the deferred-work queue over HTTP (FastAPI on uvicorn).

    Routes: POST /v1/tasks/{task}/call, POST /v1/tasks/{task}/enqueue,
    GET /v1/requests/{id}, GET /v1/tasks, GET /health; the OpenAPI document at
    /openapi.json and its pages at /docs. Every route but /health needs
    `Authorization: Bearer <token>`: set LANEWISE_SERVICE_TOKEN, or name a Prefect Secret
    block in LANEWISE_SERVICE_TOKEN_BLOCK. Without a token the service does not start.
    """
    import contextlib

    import uvicorn

    from lanewise.service.app import create_app
    from lanewise.settings import get_settings

    settings = get_settings()
    with contextlib.ExitStack() as stack:
        if settings.service_token_block or settings.names_blocks:
            # Blocks (the token, credentials, provider settings) are read once, here, from
            # the configured Prefect API, the `lanewise up` stack's, or a temporary server
            # on Prefect's own database (where saved blocks live), stopped once read.
            from lanewise.ops.prefect_server import prefect_api

            stack.enter_context(prefect_api(settings.home, own_database=False))
        app = create_app(settings)  # no token, a bad catalog: an error, nothing served
    shown = f"[{host}]" if ":" in host else host
    console.print(f"lanewise serve: http://{shown}:{port} (OpenAPI /openapi.json, docs /docs; "
                  "Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)

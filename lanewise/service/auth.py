"""The service's bearer token: where it comes from, and how a request's is checked.

The token is read once, when the app is built: from the Prefect Secret block named by
LANEWISE_SERVICE_TOKEN_BLOCK when one is named (it wins), else LANEWISE_SERVICE_TOKEN.
Without one the service refuses to start, saying how to set one. A request's token is
compared in constant time (`hmac.compare_digest`), and the token never reaches a log,
an error or a response.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lanewise.errors import ConfigurationError
from lanewise.settings import Settings

MIN_TOKEN_CHARS = 16
HOW_TO_SET = (
    "Set LANEWISE_SERVICE_TOKEN to a long random value (e.g. the output of "
    "`python -c \"import secrets; print(secrets.token_urlsafe(32))\"`), or save it in a "
    "Prefect Secret block (Secret(value=...).save('lanewise-service-token')) and set "
    "LANEWISE_SERVICE_TOKEN_BLOCK=lanewise-service-token. Clients send it as "
    "`Authorization: Bearer <token>`.")

bearer_scheme = HTTPBearer(
    scheme_name="bearerAuth", auto_error=False,
    description="The service token (LANEWISE_SERVICE_TOKEN or the Prefect Secret block "
    "named by LANEWISE_SERVICE_TOKEN_BLOCK), sent as `Authorization: Bearer <token>`.")


def service_token(settings: Settings) -> str:
    """The configured bearer token, or a ConfigurationError saying how to set one."""
    if settings.service_token_block:
        token, where = _block_token(settings.service_token_block), (
            f"the Secret block {settings.service_token_block!r} (named by "
            "LANEWISE_SERVICE_TOKEN_BLOCK)")
    elif settings.service_token is not None:
        token, where = settings.service_token.get_secret_value(), "LANEWISE_SERVICE_TOKEN"
    else:
        raise ConfigurationError(f"lanewise serve needs a bearer token and none is set. "
                                 f"{HOW_TO_SET}")
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigurationError(
            f"the service token in {where} is too short ({len(token)} characters; at "
            f"least {MIN_TOKEN_CHARS}). {HOW_TO_SET}")
    return token


def _block_token(name: str) -> str:
    """The text held by the Prefect Secret block `name` (errors never show its value)."""
    from prefect.blocks.system import Secret

    from blocks.loading import load_block

    value = load_block(Secret, name, "service_token_block").get()
    if not isinstance(value, str):
        raise ConfigurationError(f"the Secret block {name!r} (named by "
                                 "LANEWISE_SERVICE_TOKEN_BLOCK) holds a "
                                 f"{type(value).__name__}, not a text token")
    return value


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


async def require_token(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """The request carries the service's bearer token (compared in constant time), else
    a 401 with `WWW-Authenticate: Bearer`."""
    if credentials is None:
        raise _unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
    expected: bytes = request.app.state.token_bytes
    if not hmac.compare_digest(credentials.credentials.encode("utf-8"), expected):
        raise _unauthorized("wrong bearer token")

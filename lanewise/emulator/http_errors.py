"""Error bodies in each provider's own format, and the auth check."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

ANTHROPIC_KINDS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 503: "api_error", 529: "overloaded_error",
}
OPENAI_KINDS = {
    400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
    409: "invalid_request_error", 429: "requests", 500: "server_error", 503: "server_error",
}
FAULT_MESSAGES = {
    429: "Rate limit reached (emulated). Please try again later.",
    500: "The server had an error while processing your request (emulated).",
    503: "The service is temporarily unavailable (emulated).",
    529: "Overloaded (emulated).",
}


# What each provider answers an account without credit (checked against users' reports:
# github.com/ChatGPTNextWeb/NextChat/issues/3123 and anthropics/claude-quickstarts#229).
OPENAI_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)
ANTHROPIC_CREDIT_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
    "Billing to upgrade or purchase credits."
)


def openai_quota_error() -> JSONResponse:
    """OpenAI's answer to an exhausted quota: 429 `insufficient_quota` (no retry helps)."""
    return openai_error(429, OPENAI_QUOTA_MESSAGE, kind="insufficient_quota",
                        code="insufficient_quota")


def anthropic_credit_error() -> JSONResponse:
    """Anthropic's answer to an account without credit: 400 invalid_request_error."""
    return anthropic_error(400, ANTHROPIC_CREDIT_MESSAGE, kind="invalid_request_error")


def openai_error(status: int, message: str, *, kind: str | None = None,
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-shaped error response."""
    body = {"error": {"message": message, "type": kind or OPENAI_KINDS.get(status, "error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def anthropic_error(status: int, message: str, *, kind: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    """An Anthropic-shaped error response."""
    if kind in (None, "invalid_request_error") and status != 400:
        kind = None
    body = {"type": "error",
            "error": {"type": kind or ANTHROPIC_KINDS.get(status, "api_error"),
                      "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def is_anthropic_path(path: str) -> bool:
    """Anthropic's surface lives under /v1/messages; everything else under /v1 is OpenAI's."""
    return path.startswith("/v1/messages")


def presented_key(request: Request) -> str | None:
    """The API key the client sent: `x-api-key` or a Bearer token."""
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


def auth_failure(request: Request, required_key: str | None) -> JSONResponse | None:
    """A 401 in the provider's format when the key is missing or wrong, else None."""
    key = presented_key(request)
    if key and (required_key is None or key == required_key):
        return None
    message = "invalid x-api-key" if key else "missing API key"
    if is_anthropic_path(request.url.path):
        return anthropic_error(401, message)
    return openai_error(401, f"Incorrect API key provided ({message}).", code="invalid_api_key")

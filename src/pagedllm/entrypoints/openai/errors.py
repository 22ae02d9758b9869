"""OpenAI-shaped errors, exception handlers, API-key check, request body size and time limits.

Every error body is ``{"error": {"message", "type", "param", "code"}}``. Validation errors that
FastAPI would answer with 422 are answered with 400, as OpenAI does. Error bodies are written
with ASCII escapes, so text the client sent (a lone surrogate in ``model``) can never make the
error itself fail to encode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class SafeJSONResponse(JSONResponse):
    """A JSONResponse that escapes non-ASCII (and so survives lone surrogates)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class APIError(Exception):
    """An error to answer with ``status`` and an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None, code: Any = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code if code is not None else status,
        }
    }


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: Any = None,
    headers: dict[str, str] | None = None,
) -> SafeJSONResponse:
    body = error_body(status, message, param, code)
    return SafeJSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts: list[str] = []
    param: str | None = None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON: " + str(err.get("msg", "")), None
        where = ".".join(loc) or "body"
        param = param or (loc[0] if loc else None)
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "invalid request: " + "; ".join(parts[:5]), param


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to the OpenAI error shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        logger.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


class GuardMiddleware:
    """Pure ASGI middleware: API key (Bearer) on protected paths, and a body size limit.

    Pure ASGI rather than ``BaseHTTPMiddleware`` so streaming responses and client disconnects
    pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        max_body_bytes: int,
        protected_prefixes: tuple[str, ...] = ("/v1", "/tokenize", "/detokenize"),
        body_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.protected = protected_prefixes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key and scope["path"].startswith(self.protected):
            if not self._authorized(scope):
                await _send_json(
                    send,
                    401,
                    error_body(
                        401, "invalid or missing API key: send 'Authorization: Bearer <key>'"
                    ),
                )
                return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _send_json(send, 413, self._too_large())
            return
        await self.app(scope, self._limited(receive, send), send)

    def _authorized(self, scope: Scope) -> bool:
        value = _header(scope, b"authorization") or ""
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )

    def _too_large(self) -> dict:
        return error_body(413, f"request body too large (limit {self.max_body_bytes} bytes)")

    def _limited(self, receive: Receive, send: Send) -> Receive:
        """Count streamed (chunked) bodies too: a missing Content-Length is no way around it.

        While the body is incomplete, each read must arrive within ``body_timeout`` seconds
        (408): a client that stops sending mid-body must not hold a handler forever.
        """
        seen = 0
        limit = self.max_body_bytes
        timeout = self.body_timeout
        body_done = False

        async def wrapped() -> Message:
            nonlocal seen, body_done
            if body_done or timeout is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), timeout)
                except asyncio.TimeoutError:
                    raise HTTPException(
                        408, f"the request body did not arrive within {timeout:g} s"
                    ) from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > limit:
                    # FastAPI turns other exceptions raised while reading the body into 400.
                    raise HTTPException(413, f"request body too large (limit {limit} bytes)")
            return message

        return wrapped


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send_json(send: Send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})

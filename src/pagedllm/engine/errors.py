"""Errors the engine raises to its callers (the async front and the server map them to HTTP)."""

from __future__ import annotations

from pagedllm.step_result import RequestFailure

__all__ = [
    "EngineDeadError",
    "EngineOverloadedError",
    "EngineStepError",
    "RequestFailure",
    "RequestTimeoutError",
]


class EngineDeadError(RuntimeError):
    """The engine is shut down (or shutting down) and accepts no new requests."""


class EngineStepError(RuntimeError):
    """A model step failed; the requests that were in flight are failed with this error."""


class EngineOverloadedError(RuntimeError):
    """Too many requests wait already; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(RuntimeError):
    """The request ran past the server's request timeout and was aborted."""

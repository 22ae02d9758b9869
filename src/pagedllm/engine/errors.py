"""Errors the engine raises to its callers (the async front and the server map them to HTTP)."""

from __future__ import annotations

from collections.abc import Iterable


class RequestFailure(RuntimeError):
    """Work for particular requests failed (their sampling state, say), not the whole step.

    Raised by the runner with the ids of the requests at fault; the engine fails only those and
    runs the rest of the step again in the next one.
    """

    def __init__(self, request_ids: Iterable[str], cause: BaseException) -> None:
        self.request_ids = list(request_ids)
        self.cause = cause
        super().__init__(f"{type(cause).__name__}: {cause}")


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

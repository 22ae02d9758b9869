"""``RequestStream``: the outputs of one request of ``AsyncLLMEngine``, read on the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pagedllm.engine.errors import EngineStepError, RequestTimeoutError
from pagedllm.engine.outputs import RequestOutput

if TYPE_CHECKING:
    from pagedllm.engine.async_engine import AsyncLLMEngine

logger = logging.getLogger("pagedllm.server")


class RequestStream:
    """The outputs of one request, in order; iterate with ``async for``.

    Raises ``EngineStepError`` if the engine failed while the request was in flight.
    ``close()`` (also called when iteration is abandoned) aborts an unfinished request.
    """

    def __init__(
        self, engine: AsyncLLMEngine, request_id: str, deadline: float | None = None
    ) -> None:
        self.request_id = request_id
        self.finished = False
        self.started = False  # has produced an output (no longer counts as waiting)
        self.deadline = deadline  # time.monotonic() after which the request is aborted
        self._engine = engine
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._logged = False

    def _put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        try:
            item = await self._next_item()
        except BaseException as exc:
            # cancelled while waiting (the client is gone) or past the deadline
            why = "the client went away" if isinstance(exc, asyncio.CancelledError) else exc
            self._log_cut(why)
            self.close()
            raise
        if isinstance(item, BaseException):
            self.finished = True
            self._engine._streams.pop(self.request_id, None)
            self._log_cut(item)
            raise item
        if item.finished:
            self.finished = True
            self._engine._streams.pop(self.request_id, None)
            if item.error is not None or any(c.finish_reason == "error" for c in item.outputs):
                # The engine failed this request's step: surface it as an exception.
                error = EngineStepError(item.error or "the engine failed this request")
                self._log_cut(error)
                raise error
        return item

    def _log_cut(self, why: object) -> None:
        """Every stream that ends without its last output says so, once: which and why."""
        if not self._logged:
            self._logged = True
            logger.warning("request %s cut before it finished: %s", self.request_id, why)

    async def _next_item(self) -> RequestOutput | BaseException:
        if self.deadline is None:
            return await self._queue.get()
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                return self._queue.get_nowait()
            return await asyncio.wait_for(self._queue.get(), remaining)
        except (asyncio.TimeoutError, asyncio.QueueEmpty):
            raise RequestTimeoutError(
                f"the request did not finish within the server's request timeout "
                f"({self._engine.request_timeout:g} s) and was aborted"
            ) from None

    def close(self) -> None:
        """Stop listening; aborts the request in the engine if it has not finished."""
        if not self.finished:
            self._log_cut("the response was closed (client disconnect or a failed write)")
            self.finished = True
            self._engine._abort_now(self.request_id)

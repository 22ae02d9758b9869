"""``RequestStream``: the outputs of one request of ``AsyncLLMEngine``, read on the event loop.

A consumer that falls behind (its client reads slowly, or the front end's loop is busy with
other streams) finds several outputs queued; it gets them as one output whose deltas are all of
theirs joined (``coalesce``), as vLLM's output handler does, so a stream that is behind costs
one SSE event, one JSON encoding and one socket write per wake-up, not per engine step. The
result is what one engine step producing several tokens would have given (multi-step decoding
already does), so every consumer handles it unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
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
        self._items: deque[RequestOutput | BaseException] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._logged = False

    def _put(self, item: RequestOutput | BaseException) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        if not self._items:
            await self._wait()
        item = self._items.popleft()
        while self._items and isinstance(item, RequestOutput) and _joinable(self._items[0]):
            item = coalesce(item, self._items.popleft())  # type: ignore[arg-type]
        return item

    async def _wait(self) -> None:
        """Until an item is queued (or the deadline passes: ``RequestTimeoutError``)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            if self.deadline is None:
                await waiter
                return
            remaining = self.deadline - time.monotonic()
            if remaining > 0:
                await asyncio.wait_for(waiter, remaining)
                return
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiter = None
        raise RequestTimeoutError(
            f"the request did not finish within the server's request timeout "
            f"({self._engine.request_timeout:g} s) and was aborted"
        )

    def close(self) -> None:
        """Stop listening; aborts the request in the engine if it has not finished."""
        if not self.finished:
            self._log_cut("the response was closed (client disconnect or a failed write)")
            self.finished = True
            self._engine._abort_now(self.request_id)


def _joinable(item: RequestOutput | BaseException) -> bool:
    """A queued output that may be folded into the one before it: not an error (the tokens
    before an error still reach the client first) and not beam search's whole sequences."""
    if not isinstance(item, RequestOutput) or item.error is not None:
        return False
    for c in item.outputs:
        if c.finish_reason == "error" or c.score is not None:
            return False
    return True


def coalesce(first: RequestOutput, later: RequestOutput) -> RequestOutput:
    """``later`` with ``first``'s deltas in front of its own (both outputs of one request, in
    order): texts, ids and logprob lists are cumulative already; deltas are joined."""
    if any(c.score is not None for c in first.outputs):
        return later
    earlier = {c.index: c for c in first.outputs}
    for comp in later.outputs:
        prev = earlier.pop(comp.index, None)
        if prev is None:
            continue
        comp.delta_text = prev.delta_text + comp.delta_text
        comp.delta_token_ids = prev.delta_token_ids + comp.delta_token_ids
        if prev.delta_logprobs is not None or comp.delta_logprobs is not None:
            comp.delta_logprobs = (prev.delta_logprobs or []) + (comp.delta_logprobs or [])
    if earlier:  # samples that changed before but not in the later step
        later.outputs = sorted([*later.outputs, *earlier.values()], key=lambda c: c.index)
    if later.prompt_logprobs is None:
        later.prompt_logprobs = first.prompt_logprobs
    if later.metrics is None:
        later.metrics = first.metrics
    return later

"""Sequence groups in the scheduler: forks of ``n > 1`` requests, beams, and their seats.

A group is one user request's sequences: the first request and the forks that share its
pages (samples 1..n-1, or the beams of a beam search), keyed by the first request's id
(``parent_id`` of every fork). ``SequenceGroups`` is the part of ``Scheduler`` that forks and
extends them; ``SeqCount`` charges each group the larger of its members and its width against
``max_num_seqs``, so forks never overrun it. Pure Python.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from pagedllm.core.request import Request, RequestStatus

if TYPE_CHECKING:
    from pagedllm.core.kv_cache_manager import KVCacheManager


class SequenceGroups:
    """Forking and beam extension; mixed into ``Scheduler`` (which owns the state)."""

    requests: dict[str, Request]
    running: list[Request]
    kv_manager: KVCacheManager
    _unforked: dict[str, list[Request]]

    def fork_request(
        self, parent_id: str, child: Request, num_computed_tokens: int | None = None
    ) -> None:
        """Add ``child`` (a sample of an n > 1 request, or a beam) sharing its parent's blocks.

        The child's tokens must start with the parent's computed tokens; it starts with the
        parent's ``num_computed_tokens``, or with ``num_computed_tokens`` when the engine forks
        between a step's forward and ``update_from_output`` (the parent's blocks already hold
        the KV of the step's tokens then). A parent that holds no blocks (waiting, preempted,
        swapped) cannot share: the child is then queued like a new request.
        """
        parent = self.requests.get(parent_id)
        if parent is None:
            raise ValueError(f"cannot fork unknown or finished request {parent_id!r}")
        if child.request_id in self.requests:
            raise ValueError(f"request id {child.request_id!r} is already in use")
        self._check_fits(child)
        n = parent.num_computed_tokens if num_computed_tokens is None else num_computed_tokens
        if parent.status != RequestStatus.RUNNING or n == 0:
            child.num_computed_tokens = 0
            self.add_request(child)
            return
        if child.all_token_ids[:n] != parent.all_token_ids[:n] or child.num_tokens <= n:
            raise ValueError(
                f"child {child.request_id!r} must extend the parent's {n} computed tokens"
            )
        self.kv_manager.fork(parent, child)
        child.num_computed_tokens = n
        child.status = RequestStatus.RUNNING
        child.parent_id = child.parent_id or parent_id
        child.first_scheduled_time = parent.first_scheduled_time
        self.requests[child.request_id] = child
        self.running.append(child)

    def append_token(self, request_id: str, token_id: int) -> None:
        """Append a token chosen by the engine (beam search) to a request whose tokens are all
        computed; it is scheduled again from the next step."""
        request = self.requests[request_id]
        assert request.num_beam_candidates > 0, "only beams take tokens from the engine"
        request.append_output_token(token_id)

    def _fork_children(self, parent: Request, first_tokens: list[Sequence[int]]) -> list[Request]:
        """Fork a request's waiting samples, each with its first sampled token."""
        children = self._unforked.pop(parent.request_id, [])
        for child, sampled in zip(children, first_tokens, strict=True):
            child.append_output_token(sampled[0])
            child.first_token_time = time.monotonic()
            self.fork_request(parent.request_id, child)
            self._stop_if_done(child)
        return children


def tokens_of(tokens: Mapping[str, Sequence[int]], ids: list[str]) -> list[Sequence[int]]:
    missing = [i for i in ids if i not in tokens]
    if missing:
        raise ValueError(f"no sampled token for request {missing[0]!r}")
    return [tokens[i] for i in ids]


class SeqCount:
    """Sequences held by running request groups: each group (a request and its forks or
    beams, keyed by the first request's id) counts its members or its width, whichever is more,
    so a group's forks and beams are reserved against ``max_num_seqs`` when it is admitted."""

    def __init__(self, running: Iterable[Request]) -> None:
        self.members: dict[str, int] = {}
        self.width: dict[str, int] = {}
        self.total = 0
        for req in running:
            self.add(req)

    def _cost(self, key: str) -> int:
        return max(self.members.get(key, 0), self.width.get(key, 0))

    def total_with(self, req: Request) -> int:
        """The total if ``req`` were admitted."""
        key = req.parent_id or req.request_id
        before = self._cost(key)
        after = max(self.members.get(key, 0) + 1, self.width.get(key, 0), req.group_width)
        return self.total - before + after

    def add(self, req: Request) -> None:
        key = req.parent_id or req.request_id
        self.total = self.total_with(req)
        self.members[key] = self.members.get(key, 0) + 1
        self.width[key] = max(self.width.get(key, 0), req.group_width)

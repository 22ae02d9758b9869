"""``/dashboard``: a live picture of the KV page pool, served by ``pagedllm serve``.

``GET /dashboard`` is one self-contained HTML page (``static/dashboard.html``: no build step, no
CDN) that polls ``GET /dashboard/data`` twice a second. The data is a page-pool snapshot
(``engine/kv_snapshot.py``) plus a short history of throughput and KV usage.

The snapshot is taken on the engine thread (an ``AsyncLLMEngine`` stats hook), so it never
races a step; and only while someone is watching (a poll within the last ``watch_s`` seconds),
at most every ``min_interval`` seconds, so an unwatched server pays nothing but a clock read.

With an API key set, both routes need it: ``Authorization: Bearer KEY`` or ``?key=KEY`` (a
browser cannot send a header when it opens a page; the page then sends the header itself).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from pagedllm.entrypoints.openai.errors import error_response


class DashboardFeed:
    """Collects snapshots and a throughput / KV-usage history from the engine thread."""

    def __init__(
        self,
        history_len: int = 240,
        sample_every: float = 0.5,
        min_interval: float = 0.2,
        watch_s: float = 10.0,
    ) -> None:
        self.sample_every = sample_every
        self.min_interval = min_interval
        self.watch_s = watch_s
        self._lock = threading.Lock()
        self._history: deque[dict[str, float]] = deque(maxlen=history_len)
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at = 0.0
        self._watched_until = 0.0
        self._last_sample: tuple[float, int, int] | None = None

    def hook(self, engine: Any, stats: Any) -> None:
        """``AsyncLLMEngine`` stats hook (engine thread): sample history, snapshot if watched."""
        now = time.monotonic()
        self._sample(now, stats)
        if now < self._watched_until and now - self._snapshot_at >= self.min_interval:
            snapshot = engine.kv_snapshot()
            with self._lock:
                self._snapshot, self._snapshot_at = snapshot, now

    def _sample(self, now: float, stats: Any) -> None:
        gen, prompt = stats.generation_tokens_total, stats.prompt_tokens_total
        last = self._last_sample
        if last is not None and now - last[0] < self.sample_every:
            return
        self._last_sample = (now, gen, prompt)
        if last is None:
            return
        elapsed = now - last[0]
        point = {
            "t": time.time(),
            "generation_tok_s": (gen - last[1]) / elapsed,
            "prompt_tok_s": (prompt - last[2]) / elapsed,
            "kv_usage": stats.kv_usage,
            "running": stats.num_running,
            "waiting": stats.num_waiting,
        }
        with self._lock:
            self._history.append(point)

    def poll(self) -> dict[str, Any]:
        """What the page shows (event-loop side): the latest snapshot and the history."""
        self._watched_until = time.monotonic() + self.watch_s
        with self._lock:
            return {"snapshot": self._snapshot, "history": list(self._history)}


def _page() -> str:
    return (
        resources.files("pagedllm.entrypoints.openai")
        .joinpath("static/dashboard.html")
        .read_text(encoding="utf-8")
    )


def _authorized(request: Request, api_key: str | None) -> bool:
    if not api_key:
        return True
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        token = request.query_params.get("key") or ""
    return secrets.compare_digest(token.strip().encode(), api_key.encode())


def install_dashboard(app: FastAPI, async_engine: Any, api_key: str | None) -> DashboardFeed:
    """Register ``/dashboard`` and ``/dashboard/data`` and hook the feed into the engine."""
    feed = DashboardFeed()
    async_engine.stats_hooks.append(feed.hook)
    page = _page()
    denied = "invalid or missing API key: send 'Authorization: Bearer <key>' or open ?key=<key>"

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard(request: Request) -> Any:
        if not _authorized(request, api_key):
            return error_response(401, denied)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/dashboard/data", include_in_schema=False)
    async def dashboard_data(request: Request) -> Any:
        if not _authorized(request, api_key):
            return error_response(401, denied)
        return JSONResponse(feed.poll(), headers={"Cache-Control": "no-store"})

    return feed

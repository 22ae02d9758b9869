"""The listening socket and uvicorn's HTTP/1.1 protocol, hardened for serving.

* ``TCP_NODELAY`` on every connection: without it Nagle's algorithm and the client's delayed ACK
  hold each small keep-alive response (a ``/health`` answer, an SSE chunk) for ~40 ms. asyncio
  sets it only on sockets created with ``IPPROTO_TCP``, so both the listening socket and each
  accepted connection set it explicitly.
* A header timeout: a connection must deliver a request's complete headers within
  ``header_timeout`` seconds of its first byte (or of connecting), else it is closed. uvicorn has
  no such timer, so slow or half-sent headers could hold connections forever (slowloris). Body
  reads are timed in ``errors.GuardMiddleware`` (a 408 there).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT = 10.0


def make_server_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A bound TCP socket with TCP_NODELAY (inherited by accepted connections on Linux).

    ``reuse_port``: ``SO_REUSEPORT``, so several front-end processes each listen on the same
    address and the kernel spreads new connections over them (``--api-server-count``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def protocol_class(header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> type[H11Protocol]:
    """uvicorn's h11 protocol with TCP_NODELAY and a header timeout (pass as ``http=``)."""

    class HardenedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # noqa: ANN401 - asyncio's type
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and data:
                self._arm_header_timer()  # part of a request's head: it must complete in time
            else:
                self._cancel_header_timer()  # headers complete (body or next state follows)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if self.conn.their_state is h11.IDLE and idle:
                self.transport.close()

    return HardenedH11Protocol

"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) and ``pagedllm serve``.

FastAPI, uvicorn and pydantic are imported here and in this package's other modules only; the
rest of pagedllm must not import this package at module import time (the GPU image lacks them).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from pagedllm.engine.async_engine import AsyncLLMEngine
from pagedllm.entrypoints.engine_args import add_engine_args, engine_config_from_args
from pagedllm.entrypoints.openai.dashboard import install_dashboard
from pagedllm.entrypoints.openai.errors import APIError, GuardMiddleware, install_error_handlers
from pagedllm.entrypoints.openai.http_protocol import (
    DEFAULT_HEADER_TIMEOUT,
    make_server_socket,
    protocol_class,
)
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from pagedllm.entrypoints.openai.serving_base import ServerState, check_text
from pagedllm.entrypoints.openai.serving_chat import create_chat_completion, render_chat
from pagedllm.entrypoints.openai.serving_completion import create_completion
from pagedllm.entrypoints.startup import log_startup_summary
from pagedllm.entrypoints.stats_logger import add_logging_args, attach_loggers
from pagedllm.metrics import CONTENT_TYPE, ServerMetrics

logger = logging.getLogger("pagedllm.server")

DEFAULT_MAX_BODY_BYTES = 4 * 2**20
DEFAULT_MAX_WAITING_REQUESTS = 256
DEFAULT_BODY_TIMEOUT = 30.0
# Extra seconds uvicorn waits after our own shutdown grace period, for handlers to write the
# error that ends each remaining request.
_SHUTDOWN_MARGIN_S = 5


def build_app(
    async_engine: AsyncLLMEngine,
    api_key: str | None = None,
    served_model_names: list[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    drain_timeout: float = 30.0,
    tool_call_parser: str | None = None,
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
    parse_special_tokens_in_chat: bool = False,
    front_end: int | None = None,
) -> FastAPI:
    """The ASGI app over a (not yet started) async engine; the engine thread starts with it.

    ``tool_call_parser`` (``"hermes"``) turns on ``tool_choice="auto"``. ``front_end``: this
    app is front end number ``front_end`` of several (``/metrics`` labels its histograms)."""
    if tool_call_parser is not None:
        from pagedllm.entrypoints.openai.tool_parsers import get_tool_parser

        get_tool_parser(tool_call_parser)  # ValueError for an unknown name
    names = served_model_names or [async_engine.model_name]
    if async_engine.metrics is None:
        async_engine.metrics = ServerMetrics(names[0], front_end)
    state = ServerState(
        engine=async_engine,
        served_model_names=names,
        metrics=async_engine.metrics,
        tool_call_parser=tool_call_parser,
        parse_special_tokens_in_chat=parse_special_tokens_in_chat,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async_engine.start()
        yield
        # uvicorn has stopped accepting and waited for open requests; abort what is left.
        await async_engine.drain(drain_timeout)

    app = FastAPI(title="pagedllm", lifespan=lifespan)
    app.state.pagedllm = state
    install_error_handlers(app)
    _add_routes(app, state)
    install_dashboard(app, async_engine, api_key)
    app.add_middleware(
        GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes, body_timeout=body_timeout
    )
    return app


def uvicorn_config(
    app: FastAPI, shutdown_timeout: float, header_timeout: float, **kw: Any
) -> uvicorn.Config:
    """uvicorn's Config with our protocol (TCP_NODELAY, header timeout) and a graceful-shutdown
    period that ends after the engine's own (so every request gets its answer first)."""
    return uvicorn.Config(
        app,
        http=protocol_class(header_timeout),
        timeout_graceful_shutdown=int(shutdown_timeout) + _SHUTDOWN_MARGIN_S,
        **kw,
    )


def _add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        if not state.engine.is_running:
            return JSONResponse({"status": "engine not running"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        cards = [
            ModelCard(id=n, max_model_len=state.engine.max_model_len)
            for n in state.served_model_names
        ]
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw: Request) -> Any:
        return await create_completion(body, state, raw)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, raw: Request) -> Any:
        return await create_chat_completion(body, state, raw)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        state.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt or messages", param="prompt")
        if body.messages is not None:
            check_text(state, "".join(m.text() for m in body.messages), "messages")
            ids = await state.run_blocking(
                render_chat, state, body.messages, body.add_generation_prompt
            )
        else:
            check_text(state, body.prompt, "prompt")
            ids = await state.run_blocking(
                state.tokenizer.encode, body.prompt, body.add_special_tokens
            )
        resp = TokenizeResponse(
            tokens=ids, count=len(ids), max_model_len=state.engine.max_model_len
        )
        return JSONResponse(resp.model_dump())

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        state.check_model(body.model)
        vocab = int(getattr(state.engine.engine, "vocab_size", 0) or 0)
        bad = [t for t in body.tokens if t < 0 or (vocab and t >= vocab)]
        if bad:
            raise APIError(
                400, f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})", param="tokens"
            )
        return JSONResponse(
            DetokenizeResponse(prompt=state.tokenizer.decode(body.tokens)).model_dump()
        )

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = state.metrics.render(state.engine.stats())
        return PlainTextResponse(text, media_type=CONTENT_TYPE)


# ------------------------------------------------------------------------- CLI
def add_serve_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``pagedllm serve [MODEL]``: server options plus the engine options."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (or env PAGEDLLM_API_KEY)",
    )
    parser.add_argument(
        "--max-request-body",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest accepted request body in bytes (default 4 MiB)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish on SIGTERM; then each gets an error "
        "(streams: an error event and [DONE])",
    )
    parser.add_argument(
        "--max-waiting-requests",
        type=int,
        default=DEFAULT_MAX_WAITING_REQUESTS,
        help="requests accepted but not yet started beyond which new ones get 429 with "
        "Retry-After (default %(default)s; 0: no limit)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        help="seconds after which an unfinished request is aborted and its KV freed "
        "(504 / an error event; default: none)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT,
        help="seconds a connection gets to send a request's headers (default %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT,
        help="seconds each read of a request body may take (408; default %(default)s)",
    )
    parser.add_argument(
        "--parse-special-tokens-in-chat",
        action="store_true",
        help="encode special-token text in chat messages as the special tokens (unsafe: a user "
        "can forge turns); by default it is plain text",
    )
    parser.add_argument(
        "--engine-process",
        default="auto",
        choices=["auto", "on", "off"],
        help="run the engine core in its own process, the HTTP front end in this one (on), or "
        "both in one process (off); auto: on for a CUDA device, off on CPU (measured: "
        "docs/architecture.md)",
    )
    parser.add_argument(
        "--api-server-count",
        type=int,
        default=1,
        help="HTTP front-end processes sharing the port (SO_REUSEPORT) over one engine-core "
        "process; more than 1 needs the engine core process (not --engine-process off). "
        "Admission limits and /metrics histograms are per front end",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level",
    )
    add_logging_args(parser)
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="the model name the API reports and accepts (default: the file's)",
    )
    parser.add_argument(
        "--tool-call-parser",
        default=None,
        choices=["hermes"],
        help='parse <tool_call> blocks into tool_calls; needed for tool_choice "auto"',
    )
    add_engine_args(parser)


def run_server(args: argparse.Namespace) -> int:
    """Load the model, serve until SIGTERM/SIGINT, drain, and return the exit code (0; 1 when
    the engine-core process died; 2 for invalid options)."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = engine_config_from_args(args)
        count = check_api_server_count(args.api_server_count, args.engine_process)
    except (ValueError, TypeError) as exc:
        logger.error("invalid engine options: %s", exc)
        return 2
    if count > 1:
        from pagedllm.entrypoints.openai.front_ends import run_front_ends

        return run_front_ends(args, config)
    start = time.perf_counter()
    separate = use_engine_process(args.engine_process, config)
    if separate:
        from pagedllm.engine.core_client import AsyncMPEngine

        async_engine: AsyncLLMEngine = AsyncMPEngine.from_config(
            config, log_level=args.log_level, **server_limits(args)
        )
    else:
        async_engine = AsyncLLMEngine.from_config(config, **server_limits(args))
    if not separate:
        log_startup_summary(async_engine.engine, time.perf_counter() - start)
    sock = make_server_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]

    def announce(model_name: str) -> None:
        print(f"pagedllm: serving {model_name} on http://{host}:{port}", flush=True)
        print(f"pagedllm: live KV page dashboard at http://{host}:{port}/dashboard", flush=True)

    return serve_on(args, async_engine, sock, announce)


def server_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The async engine's admission cap and deadline (per front end)."""
    return {
        "max_waiting_requests": args.max_waiting_requests or None,
        "request_timeout": args.request_timeout,
    }


def check_api_server_count(count: int, engine_process: str) -> int:
    """``--api-server-count``: at least 1; more than 1 only over the engine core process."""
    if count < 1:
        raise ValueError(f"api_server_count must be >= 1, got {count}")
    if count > 1 and engine_process == "off":
        raise ValueError(
            f"api_server_count={count} needs the engine core in its own process: several front "
            "ends share one core (use --engine-process on or auto)"
        )
    return count


def serve_on(
    args: argparse.Namespace,
    async_engine: AsyncLLMEngine,
    sock: Any,
    on_started: Callable[[str], None],
    front_end: int | None = None,
) -> int:
    """Serve ``async_engine`` on the bound ``sock`` until SIGTERM/SIGINT, drain, shut the engine
    down; 0, or 1 when its engine-core process died. ``on_started(model_name)`` runs once
    uvicorn listens. ``front_end``: one of several front ends (``front_ends.py``): engine
    stats are logged by front end 0 only and SIGINT is left to the supervisor."""
    attach_loggers(async_engine, args, stats=front_end in (None, 0))
    api_key = args.api_key or os.environ.get("PAGEDLLM_API_KEY") or None
    names = [args.served_model_name] if args.served_model_name else None
    app = build_app(
        async_engine,
        api_key=api_key,
        served_model_names=names,
        max_body_bytes=args.max_request_body,
        drain_timeout=args.shutdown_timeout,
        tool_call_parser=args.tool_call_parser,
        body_timeout=args.body_timeout,
        parse_special_tokens_in_chat=args.parse_special_tokens_in_chat,
        front_end=front_end,
    )
    uv_config = uvicorn_config(
        app,
        args.shutdown_timeout,
        args.header_timeout,
        log_level=args.log_level,
        access_log=args.log_level == "debug",
    )
    model_name = app.state.pagedllm.model_name
    server = _DrainingServer(uv_config, async_engine, args.shutdown_timeout,
                             lambda: on_started(model_name), front_end is not None)  # fmt: skip
    # uvicorn re-raises a captured SIGTERM once it has shut down gracefully, which with the
    # default handler would kill us with -15; a graceful drain is a clean exit (0).
    signal.signal(signal.SIGTERM, lambda *_: None)
    exit_code = 0

    def core_died(message: str) -> None:
        # no in-place restart: exit non-zero so the supervisor (systemd, k8s) restarts us whole
        nonlocal exit_code
        exit_code = 1
        logger.error("%s: the server exits (status 1)", message)
        server.should_exit = True

    summary = getattr(async_engine.engine, "summary", None)
    if summary is not None:  # the engine core process: it sent its start-up summary
        async_engine.on_core_death.append(core_died)
        if front_end in (None, 0):
            for line in summary.lines():
                logging.getLogger("pagedllm.entrypoints.startup").info("%s", line)
    try:
        server.run(sockets=[sock])
    finally:
        async_engine.shutdown()
    return exit_code


def use_engine_process(choice: str, config: Any) -> bool:
    """``--engine-process``: auto means on for a CUDA device, off on CPU.

    On CPU the bundled model's forward takes the cores the front end would need, and a second
    interpreter only adds a hop: measured no faster at 1 and 32 streams (docs/architecture.md).
    """
    if choice != "auto":
        return choice == "on"
    device = str(config.model.device)
    if device == "auto":
        import torch

        return bool(torch.cuda.is_available())
    return device.startswith("cuda")


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: stop accepting and start the engine's grace period at once."""

    def __init__(
        self, config: uvicorn.Config, engine: AsyncLLMEngine, grace: float,
        on_started: Callable[[], None], supervised: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(config)
        self._engine = engine
        self._grace = grace
        self._on_started = on_started
        # a supervised front end leaves Ctrl-C to its supervisor, which forwards a SIGTERM
        # (a second SIGINT from the terminal would make uvicorn skip the drain)
        self._supervised = supervised

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()

    def handle_exit(self, sig: int, frame: Any) -> None:  # noqa: ANN401 - a signal frame
        if self._supervised and sig == signal.SIGINT:
            return
        super().handle_exit(sig, frame)
        self._engine.begin_shutdown(self._grace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pagedllm serve", description=__doc__)
    add_serve_args(parser)
    return run_server(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

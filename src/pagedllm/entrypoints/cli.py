"""The ``pagedllm`` command line: serve, generate, chat and bench."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from pagedllm.entrypoints.engine_args import add_engine_args, engine_config_from_args
from pagedllm.sampling_params import SamplingParams

DESCRIPTION = "pagedllm: LLM inference and serving on a paged KV cache (PagedAttention)."
EPILOG = """examples:
  pagedllm generate "Hello, my name is" --max-tokens 32
  pagedllm chat --system "You are terse."
  pagedllm serve /path/to/hf_model_dir --port 8000
  pagedllm bench throughput --threads 2

the model is the first argument (or --model) everywhere; default: the bundled SmolLM2-135M.
'pagedllm COMMAND --help' lists a command's options with their defaults."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show each option's default, keep the examples' line breaks.

    An unset default (None) or an off switch (False) is not shown: the help text says what
    "unset" means where it matters, and a help text that names its default already keeps it.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def version() -> str:
    from pagedllm import __version__

    return __version__


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, default=256, help="most tokens per answer")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 is greedy; higher is more random"
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k best (0: all)")
    parser.add_argument(
        "--stop", action="append", default=None, help="a stop string (repeat for more)"
    )
    parser.add_argument(
        "--ignore-eos",
        action="store_true",
        help="keep generating past the end-of-sequence token (benchmarks)",
    )


def _sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop=args.stop or [],
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )


def _make_engine(args: argparse.Namespace):  # noqa: ANN202 - lazy import keeps --help fast
    from pagedllm.engine.llm_engine import LLMEngine
    from pagedllm.entrypoints.startup import log_startup_summary

    start = time.perf_counter()
    engine = LLMEngine.from_config(engine_config_from_args(args))
    log_startup_summary(engine, time.perf_counter() - start)
    return engine


def _looks_like_model(text: str) -> bool:
    return os.path.exists(text) or text.endswith(".gguf")


def cmd_generate(args: argparse.Namespace) -> int:
    """Complete each prompt and print the text (streamed when there is one prompt)."""
    prompts = list(args.prompt)
    # `generate MODEL PROMPT...`: a first argument naming a file or directory is the model
    if args.model is None and len(prompts) > 1 and _looks_like_model(prompts[0]):
        args.model = prompts.pop(0)
    params = _sampling_from_args(args)  # before loading the model: bad values fail fast
    engine = _make_engine(args)
    prompts = prompts or [sys.stdin.read()]
    for i, prompt in enumerate(prompts):
        if args.chat:  # each prompt is one user turn, rendered by the model's chat template
            ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
            engine.add_request(str(i), prompt, params, prompt_token_ids=list(ids))
        else:
            engine.add_request(str(i), prompt, params)
    texts: dict[str, str] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if len(prompts) == 1:
                sys.stdout.write(out.outputs[0].delta_text)
                sys.stdout.flush()
            if out.finished:
                texts[out.request_id] = out.outputs[0].text
    if len(prompts) == 1:
        print()
    else:
        for i in range(len(prompts)):
            print(f"--- [{i}] {prompts[i]!r}\n{texts[str(i)]}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """An interactive chat (see ``entrypoints/chat.py``)."""
    from pagedllm.entrypoints.chat import ChatSession

    params = _sampling_from_args(args)  # before loading the model: bad values fail fast
    return ChatSession(_make_engine(args), params, system=args.system).run()


def cmd_serve(args: argparse.Namespace) -> int:
    if getattr(args, "_import_error", None):
        raise ValueError(
            f"the server needs the 'server' extra ({args._import_error}): "
            "pip install 'pagedllm[server]'"
        )
    from pagedllm.entrypoints.openai.server import run_server

    return run_server(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pagedllm", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"pagedllm {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_Formatter)

    gen = command("generate", "complete prompts (or one chat turn each with --chat)")
    gen.add_argument(
        "prompt",
        nargs="*",
        metavar="[MODEL] PROMPT",
        help="prompt texts (default: read stdin); a first argument naming an existing file or "
        "directory is the model",
    )
    gen.add_argument(
        "--chat", action="store_true", help="send each prompt as a user message (chat template)"
    )
    add_engine_args(gen, positional_model=False)
    _add_sampling_args(gen)
    gen.set_defaults(func=cmd_generate)

    chat = command("chat", "interactive chat that streams its answers")
    add_engine_args(chat)
    _add_sampling_args(chat)
    chat.add_argument("--system", default=None, help="a system prompt")
    chat.set_defaults(func=cmd_chat)

    serve = command("serve", "OpenAI-compatible HTTP server (with a /dashboard of the KV pages)")
    _add_serve(serve)
    serve.set_defaults(func=cmd_serve)

    bench = command("bench", "benchmarks: offline throughput, serving latency, page-size sweep")
    _add_bench(bench)
    return parser


def _add_serve(parser: argparse.ArgumentParser) -> None:
    try:
        from pagedllm.entrypoints.openai.server import add_serve_args
    except ImportError as exc:  # the server extra is not installed
        parser.set_defaults(_import_error=str(exc))
        add_engine_args(parser)
        return
    add_serve_args(parser)


def _add_bench(parser: argparse.ArgumentParser) -> None:
    from pagedllm.benchmark.cli import add_bench_args

    add_bench_args(parser, formatter_class=_Formatter)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # INFO lines (start-up summary, progress notes) go to stderr; stdout stays the answer
    if args.command != "serve":  # serve configures logging from its --log-level
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:
        print(f"pagedllm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

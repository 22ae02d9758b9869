"""``pagedllm serve | generate | chat | bench``: the command line."""

from __future__ import annotations

import argparse
import sys

from pagedllm.entrypoints.engine_args import add_engine_args, engine_config_from_args
from pagedllm.sampling_params import SamplingParams


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--stop", action="append", default=None)


def _sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop=args.stop or [],
        seed=args.seed,
    )


def _make_engine(args: argparse.Namespace):  # noqa: ANN202 - lazy import keeps --help fast
    from pagedllm.engine.llm_engine import LLMEngine

    return LLMEngine.from_config(engine_config_from_args(args))


def cmd_generate(args: argparse.Namespace) -> int:
    """Complete each prompt and print the text (streamed when there is one prompt)."""
    params = _sampling_from_args(args)  # before loading the model: bad values fail fast
    engine = _make_engine(args)
    prompts = args.prompt or [sys.stdin.read()]
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
    """An interactive chat that streams the answer; /reset clears the history, /exit quits."""
    params = _sampling_from_args(args)  # before loading the model: bad values fail fast
    engine = _make_engine(args)
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    turn = 0
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        ids = engine.tokenizer.apply_chat_template(history, add_generation_prompt=True)
        turn += 1
        try:
            engine.add_request(f"chat-{turn}", None, params, prompt_token_ids=list(ids))
        except ValueError as exc:
            print(f"error: {exc}")
            history.pop()
            continue
        answer = ""
        while engine.has_unfinished_requests():
            for out in engine.step():
                sys.stdout.write(out.outputs[0].delta_text)
                sys.stdout.flush()
                answer = out.outputs[0].text
        print()
        history.append({"role": "assistant", "content": answer})


def cmd_serve(args: argparse.Namespace) -> int:
    from pagedllm.entrypoints.openai.server import run_server

    return run_server(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="complete prompts")
    gen.add_argument("prompt", nargs="*", help="prompt text (default: read stdin)")
    gen.add_argument("--model", dest="model", default=None)
    gen.add_argument(
        "--chat", action="store_true", help="send each prompt as a user message (chat template)"
    )
    _add_engine_args_no_positional(gen)
    _add_sampling_args(gen)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat (streams tokens)")
    add_engine_args(chat)
    _add_sampling_args(chat)
    chat.add_argument("--system", default=None, help="a system prompt")
    chat.set_defaults(func=cmd_chat)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    _add_serve(serve)
    serve.set_defaults(func=cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks: throughput, serve, block-size sweep")
    _add_bench(bench)
    return parser


def _add_engine_args_no_positional(parser: argparse.ArgumentParser) -> None:
    """Engine options for subcommands whose positional arguments are prompts."""
    scratch = argparse.ArgumentParser(add_help=False)
    add_engine_args(scratch)
    for action in scratch._actions:  # noqa: SLF001 - copy every option but the positional
        if action.option_strings and action.dest != "help":
            parser._add_action(action)  # noqa: SLF001


def _add_serve(parser: argparse.ArgumentParser) -> None:
    try:
        from pagedllm.entrypoints.openai.server import add_serve_args
    except ImportError as exc:  # pragma: no cover - the server extra is not installed
        parser.set_defaults(_import_error=str(exc))
        add_engine_args(parser)
        return
    add_serve_args(parser)


def _add_bench(parser: argparse.ArgumentParser) -> None:
    from pagedllm.benchmark.cli import add_bench_args

    add_bench_args(parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:
        print(f"pagedllm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

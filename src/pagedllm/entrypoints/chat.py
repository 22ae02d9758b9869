"""``pagedllm chat``: an interactive chat that streams answers.

* The conversation is re-rendered through the model's chat template every turn (the prefix cache
  makes the repeated history cheap). When it no longer fits ``max_model_len`` with room for
  ``max_tokens``, the oldest turns are dropped (the system prompt is kept) and a note says so.
* Ctrl-C while the model answers stops that answer (the request is aborted between two engine
  steps, never inside one), keeps what was shown, and returns to the prompt. Ctrl-C at the
  prompt does not quit either: ``/exit`` or Ctrl-D does. ``/reset`` clears the history.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from pagedllm.sampling_params import SamplingParams

Message = dict[str, str]
HELP = "commands: /reset clears the history, /exit (or Ctrl-D) quits; Ctrl-C stops an answer"


def trim_history(
    history: list[Message], count_tokens: Callable[[list[Message]], int], budget: int
) -> tuple[list[Message], int]:
    """Drop the oldest non-system messages until ``count_tokens(history) <= budget``.

    The last message (the new user turn) is never dropped; a leading system message is kept.
    Returns the trimmed history and how many messages were dropped. Raises ValueError when the
    system prompt and the new message alone do not fit.
    """
    head = history[:1] if history and history[0]["role"] == "system" else []
    body = history[len(head) :]
    dropped = 0
    while count_tokens(head + body) > budget:
        if len(body) <= 1:
            raise ValueError(
                f"this message needs {count_tokens(head + body)} tokens of prompt, more than "
                f"the {budget} left by max_model_len after max_tokens: shorten it, lower "
                "--max-tokens or raise --max-model-len"
            )
        # drop whole turns: a user message and the answer that followed it
        cut = 2 if len(body) > 2 and body[1]["role"] == "assistant" else 1
        body = body[cut:]
        dropped += cut
    return head + body, dropped


class ChatSession:
    """One interactive conversation over an ``LLMEngine``."""

    def __init__(
        self,
        engine: Any,
        params: SamplingParams,
        system: str | None = None,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
    ) -> None:
        self.engine = engine
        self.params = params
        self.system = system
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.history: list[Message] = []
        self.turn = 0
        self._interrupted = False
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def run(self, read_line: Callable[[str], str] = input) -> int:
        """The read-answer loop; returns the exit code."""
        while True:
            try:
                line = read_line("> ")
            except EOFError:
                self.out.write("\n")
                return 0
            except KeyboardInterrupt:
                self.out.write("\n")
                self.err.write(f"({HELP})\n")
                continue
            command = line.strip()
            if command in ("/exit", "/quit"):
                return 0
            if command == "/reset":
                self.reset()
                self.err.write("(history cleared)\n")
                continue
            if command in ("/help", "/?"):
                self.err.write(HELP + "\n")
                continue
            if command:
                self.answer(line)

    def _count(self, messages: list[Message]) -> int:
        return len(self.engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def answer(self, text: str) -> str | None:
        """Answer one user message, streaming it; None when it could not be sent."""
        budget = self.engine.max_model_len - (self.params.max_tokens or 1)
        try:
            history, dropped = trim_history(
                self.history + [{"role": "user", "content": text}], self._count, budget
            )
        except ValueError as exc:
            self.err.write(f"error: {exc}\n")
            return None
        if dropped:
            self.err.write(
                f"(dropped the {dropped} oldest messages to fit max_model_len="
                f"{self.engine.max_model_len}; /reset starts over)\n"
            )
        ids = self.engine.tokenizer.apply_chat_template(history, add_generation_prompt=True)
        self.turn += 1
        request_id = f"chat-{self.turn}"
        try:
            self.engine.add_request(request_id, None, self.params, prompt_token_ids=list(ids))
        except ValueError as exc:
            self.err.write(f"error: {exc}\n")
            return None
        reply = self._stream(request_id)
        self.history = history + [{"role": "assistant", "content": reply}]
        return reply

    def _stream(self, request_id: str) -> str:
        """Step the engine until the answer ends or Ctrl-C stops it."""
        self._interrupted = False
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        reply = ""
        try:
            aborted = False
            while self.engine.has_unfinished_requests():
                if self._interrupted and not aborted:
                    self.engine.abort_request(request_id)  # between steps: the engine is consistent
                    aborted = True
                for out in self.engine.step():
                    if not aborted:
                        self.out.write(out.outputs[0].delta_text)
                        self.out.flush()
                        reply = out.outputs[0].text
        finally:
            signal.signal(signal.SIGINT, previous)
        self.out.write("\n")
        if aborted:
            self.err.write("(stopped)\n")
        return reply

    def _on_interrupt(self, signum: int, frame: object) -> None:
        self._interrupted = True

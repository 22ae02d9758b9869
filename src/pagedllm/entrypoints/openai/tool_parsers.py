"""Tool-call parsers: model text -> OpenAI ``tool_calls`` (whole answers and streamed deltas).

``hermes``: the ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks that Hermes,
Qwen2.5/3 and our fallback tool prompt (``loader/tool_prompt.py``) use; text before the first
block is the message content. Streaming holds back only what could still become a block: a
tail of text that is a prefix of ``<tool_call>``, or a block not yet closed. A block whose JSON
does not parse stays in the content, so nothing the model wrote is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pagedllm.entrypoints.openai.protocol import random_id

_START = "<tool_call>"
_END = "</tool_call>"


@dataclass(slots=True)
class ParsedCall:
    """One complete tool call: its position among the answer's calls, id, name, JSON args."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class HermesToolParser:
    """Incremental parser of one answer; ``feed`` each text delta, then ``finish``."""

    _buffer: str = ""
    _inside: bool = False
    calls: list[ParsedCall] = field(default_factory=list)

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        """Content to show now and the tool calls completed by ``text``."""
        self._buffer += text
        content: list[str] = []
        done: list[ParsedCall] = []
        while True:
            if not self._inside:
                at = self._buffer.find(_START)
                if at < 0:
                    keep = _partial_suffix(self._buffer, _START)
                    cut = len(self._buffer) - keep
                    content.append(self._buffer[:cut])
                    self._buffer = self._buffer[cut:]
                    break
                content.append(self._buffer[:at])
                self._buffer = self._buffer[at + len(_START) :]
                self._inside = True
            at = self._buffer.find(_END)
            if at < 0:
                break
            body, self._buffer = self._buffer[:at], self._buffer[at + len(_END) :]
            self._inside = False
            call = self._call(body)
            if call is None:
                content.append(_START + body + _END)
            else:
                done.append(call)
        return "".join(content), done

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """The end of the answer: an unclosed block is a call if its JSON is complete."""
        rest, self._buffer = self._buffer, ""
        if not self._inside:
            return rest, []
        self._inside = False
        call = self._call(rest)
        return ("", [call]) if call is not None else (_START + rest, [])

    def parse(self, text: str) -> tuple[str, list[ParsedCall]]:
        """A whole answer at once: (content, calls)."""
        content, calls = self.feed(text)
        tail, more = self.finish()
        return content + tail, calls + more

    def _call(self, body: str) -> ParsedCall | None:
        try:
            value: Any = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            arguments_text = arguments
        else:
            arguments_text = json.dumps(arguments, ensure_ascii=False)
        call = ParsedCall(len(self.calls), random_id("call"), value["name"], arguments_text)
        self.calls.append(call)
        return call


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


TOOL_PARSERS: dict[str, type[HermesToolParser]] = {"hermes": HermesToolParser}


def get_tool_parser(name: str) -> type[HermesToolParser]:
    """The parser class for ``--tool-call-parser`` (ValueError listing the known ones)."""
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown tool call parser {name!r}; available: {sorted(TOOL_PARSERS)}"
        ) from None

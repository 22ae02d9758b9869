"""What ``tools`` and ``tool_choice`` do to a chat request: prompt, constraint, parsing.

- ``none``: the tools stay out of the prompt and the answer is plain text (vLLM's
  ``--exclude-tools-when-tool-choice-none``).
- ``auto``: the tools go into the prompt and the answer goes through the server's
  ``--tool-call-parser`` (a 400 when the server has none).
- ``required`` / a named function: the tools go into the prompt and the answer is constrained by
  a grammar to ``<tool_call>`` blocks whose JSON matches a tool's name and parameter schema, so
  the arguments always parse; at most one call when ``parallel_tool_calls`` is false.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pagedllm.entrypoints.openai.errors import APIError
from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, ChatTool
from pagedllm.entrypoints.openai.tool_parsers import HermesToolParser, get_tool_parser
from pagedllm.structured.backend import JSON_OPTIONS
from pagedllm.structured.params import StructuredOutputParams


@dataclass(slots=True)
class ToolPlan:
    """The tools to render, the output constraint (if forced) and the parser (if any)."""

    tools: list[dict[str, Any]] | None = None
    constraint: StructuredOutputParams | None = None
    parser: type[HermesToolParser] | None = None


def plan_tools(body: ChatCompletionRequest, parser_name: str | None) -> ToolPlan:
    """Decide from the request's tools / tool_choice (APIError 400 on a bad combination)."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs a non-empty tools list", param="tool_choice")
        return ToolPlan()
    choice = choice or "auto"
    if choice == "none":
        return ToolPlan()
    tools = [t.model_dump(exclude_none=True) for t in body.tools]
    if choice == "auto":
        if parser_name is None:
            raise APIError(
                400,
                'tool_choice "auto" needs a tool call parser: start the server with '
                "--tool-call-parser hermes",
                param="tool_choice",
            )
        return ToolPlan(tools=tools, parser=get_tool_parser(parser_name))
    if body.structured_output() is not None:
        raise APIError(
            400, "a forced tool_choice cannot be combined with an output constraint",
            param="tool_choice",
        )  # fmt: skip
    chosen = body.tools
    if not isinstance(choice, str):
        chosen = [t for t in body.tools if t.function.name == choice.function.name]
        if not chosen:
            raise APIError(
                400, f"tool_choice names {choice.function.name!r}, which is not in tools",
                param="tool_choice",
            )  # fmt: skip
    single = not isinstance(choice, str) or body.parallel_tool_calls is False
    return ToolPlan(
        tools=tools, constraint=tool_call_grammar(chosen, single), parser=HermesToolParser
    )


def tool_call_grammar(tools: list[ChatTool], single: bool) -> StructuredOutputParams:
    """A Lark grammar (llguidance) of one or more Hermes blocks calling one of ``tools``."""
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.function.name},
                "arguments": t.function.parameters or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema = {"anyOf": variants, "x-guidance": JSON_OPTIONS}
    start = "start: call\n" if single else 'start: call ("\\n" call)*\n'
    grammar = (
        start
        + 'call: "<tool_call>\\n" body "\\n</tool_call>"\n'
        + "body: %json "
        + json.dumps(schema)
        + "\n"
    )
    return StructuredOutputParams(grammar=grammar)

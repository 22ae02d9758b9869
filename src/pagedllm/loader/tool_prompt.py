"""Tools in the prompt for chat templates that know nothing of tools (the bundled SmolLM2's).

A template that mentions ``tools`` gets them as a template variable, as transformers passes them.
For the others the conversation is rewritten the way Qwen2.5 / Hermes templates render it, so
the model sees a familiar format and the Hermes parser can read its answer:

- the tool signatures go into the system message, inside ``<tools></tools>``, with the
  instruction to answer ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``;
- an assistant message's ``tool_calls`` become those ``<tool_call>`` blocks after its text;
- a ``tool`` message becomes a user message wrapping the result in ``<tool_response>``.
"""

from __future__ import annotations

import json
from typing import Any

_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def template_supports_tools(template: str) -> bool:
    """True when the template renders tools and tool messages itself."""
    return "tools" in template and "tool_calls" in template


def render_tool_call(call: dict[str, Any]) -> str:
    """One ``<tool_call>`` block (Hermes format) of an OpenAI-style tool call dict."""
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        arguments = json.loads(arguments) if arguments.strip() else {}
    body = json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def hermes_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The conversation with tools, tool calls and tool results written as plain text."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            blocks = [render_tool_call(c) for c in message["tool_calls"]]
            content = "\n".join(([content] if content else []) + blocks)
            out.append({"role": "assistant", "content": content})
        elif role == "tool":
            wrapped = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("_tool_results"):  # consecutive results share one turn
                out[-1]["content"] += "\n" + wrapped
            else:
                out.append({"role": "user", "content": wrapped, "_tool_results": True})
        else:
            out.append({"role": role, "content": content})
    for message in out:
        message.pop("_tool_results", None)
    if tools:
        block = _TOOLS_HEADER
        for tool in tools:
            block += "\n" + json.dumps(tool, ensure_ascii=False)
        block += _TOOLS_FOOTER
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out

"""Tools in chat prompts: tool-aware templates get ``tools=``; others the Hermes fallback."""

from __future__ import annotations

import json

from tokenizers import Tokenizer as Backend
from tokenizers.models import WordLevel

from pagedllm.loader.tokenizer import Tokenizer

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
MESSAGES = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
    {"role": "tool", "tool_call_id": "c2", "content": "43"},
]
PLAIN = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
AWARE = (
    "{% if tools %}TOOLS={{ tools | length }}{% endif %}{% for m in messages %}[{{ m['role'] }}]"
    "{% if m.tool_calls %}{{ m.tool_calls[0].function.name }}{% endif %}{% endfor %}"
)


def _tokenizer(template: str) -> Tokenizer:
    return Tokenizer(Backend(WordLevel({"[UNK]": 0}, unk_token="[UNK]")), chat_template=template)


def test_fallback_writes_hermes_blocks():
    text = _tokenizer(PLAIN).apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=False, tools=TOOLS
    )
    assert text.startswith("[system]# Tools") and json.dumps(TOOLS[0]) in text
    assert '[assistant]<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>' in text
    # both results in one user turn, as Qwen2.5 renders consecutive tool messages
    assert (
        "[user]<tool_response>\n42\n</tool_response>\n<tool_response>\n43\n</tool_response>" in text
    )
    assert "[tool]" not in text


def test_tool_aware_template_gets_tools():
    text = _tokenizer(AWARE).apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=False, tools=TOOLS
    )
    assert text.startswith("TOOLS=1") and "[assistant]f" in text and "[tool]" in text

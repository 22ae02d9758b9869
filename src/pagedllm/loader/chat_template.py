"""Render Hugging Face style Jinja2 chat templates, sandboxed.

Chat templates come from model files and are untrusted code, so they run in Jinja2's
``ImmutableSandboxedEnvironment`` with the same options and helpers transformers gives them
(``trim_blocks``, ``lstrip_blocks``, ``raise_exception``, a non-escaping ``tojson``,
``strftime_now``), so a template renders here exactly as it does there.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which would change the prompt text.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    """Compile once per distinct template string (rendering is per request)."""
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _GenerationTag(Extension):
        # Some templates mark assistant spans with {% generation %}...{% endgeneration %} for
        # training masks; for inference the body is rendered unchanged.
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_render")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _render(self, caller: Any) -> str:
            return caller()

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: dict[str, str | None] | None = None,
    **kwargs: Any,
) -> str:
    """Render ``messages`` with ``template``.

    ``special_tokens`` (``bos_token``, ``eos_token``, ...) become template variables; extra
    keyword arguments (``tools``, ``enable_thinking``, ...) are passed through as variables.
    A template error (including ``raise_exception`` calls) becomes a ``ValueError`` because it
    almost always means the conversation is malformed for this model (e.g. roles not alternating).
    """
    import jinja2

    if not isinstance(messages, list | tuple) or not all(isinstance(m, dict) for m in messages):
        raise TypeError("messages must be a list of dicts like {'role': 'user', 'content': '...'}")
    variables: dict[str, Any] = dict(special_tokens or {})
    variables.update(kwargs)
    try:
        return _compile(template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **variables
        )
    except jinja2.exceptions.TemplateError as exc:
        raise ValueError(f"chat template failed to render these messages: {exc}") from exc

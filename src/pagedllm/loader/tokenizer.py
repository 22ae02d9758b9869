"""The engine's tokenizer: a thin, typed wrapper over a ``tokenizers.Tokenizer``.

Whatever a model ships (a GGUF vocabulary, an HF ``tokenizer.json``, nothing at all), the loader
turns it into this one class, so the engine, detokenizer and server never care where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from .chat_template import render_chat_template
from .tool_prompt import hermes_messages, template_supports_tools


class Tokenizer:
    """Encode/decode text and render chat prompts for one model.

    ``eos_token_ids`` holds every id that ends generation (the tokenizer's EOS plus any extra ids
    from ``generation_config.json`` or GGUF ``eot``/``eom`` ids). Whether ``encode(...,
    add_special_tokens=True)`` adds BOS is decided by the backend's post-processor, which the
    loader configures from the model's own settings (``add_bos_token``).
    """

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        bos_token_id: int | None = None,
        eos_token_ids: Iterable[int] = (),
        pad_token_id: int | None = None,
        unk_token_id: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        eos_list = list(dict.fromkeys(int(i) for i in eos_token_ids))
        self.bos_token_id = bos_token_id
        # The first EOS is the tokenizer's own one: the `eos_token` chat templates write.
        self.eos_token_id: int | None = eos_list[0] if eos_list else None
        self.eos_token_ids: frozenset[int] = frozenset(eos_list)
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        self.chat_template = chat_template

    # -- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added tokens included (may be < the model's vocab)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _token(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.backend.id_to_token(token_id)

    @property
    def bos_token(self) -> str | None:
        return self._token(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        return self._token(self.eos_token_id)

    @property
    def pad_token(self) -> str | None:
        return self._token(self.pad_token_id)

    @property
    def unk_token(self) -> str | None:
        return self._token(self.unk_token_id)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of special added tokens plus bos/eos/pad/unk, sorted."""
        ids = {i for i, tok in self.backend.get_added_tokens_decoder().items() if tok.special}
        ids.update(self.eos_token_ids)
        for extra in (self.bos_token_id, self.pad_token_id, self.unk_token_id):
            if extra is not None:
                ids.add(extra)
        return sorted(ids)

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | None | list[str | None]:
        """Token strings (in the vocabulary's own spelling, e.g. ``Ġhello``) for ids."""
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        """Ids of token strings (``None`` for unknown ones)."""
        if isinstance(tokens, str):
            return self.backend.token_to_id(tokens)
        return [self.backend.token_to_id(t) for t in tokens]

    # -- text -------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (``<|im_start|>``) are
        matched whole; ``add_special_tokens`` adds what the model's post-processor adds (BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a string, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> list[list[int]]:
        """``encode`` for many texts at once (parallel inside ``tokenizers``)."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; an incomplete UTF-8 sequence at the end decodes to U+FFFD."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # -- chat -------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        chat_template: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> list[int] | str:
        """Render ``messages`` with the model's chat template (or ``chat_template``).

        Returns token ids when ``tokenize`` (encoded without adding BOS again: the template
        writes every special token itself, as transformers does), else the prompt text. Extra
        keyword arguments (``enable_thinking``, ...) become template variables. ``tools``
        (OpenAI-style tool dicts) go to a template that renders tools; for one that does not,
        tools, assistant ``tool_calls`` and ``tool`` messages are written in the Hermes format
        (``loader/tool_prompt.py``).
        """
        template = chat_template or self.chat_template
        if not template:
            raise ValueError(
                "this model has no chat template; pass chat_template=... or use a plain "
                "completion prompt instead of chat messages"
            )
        uses_tools = bool(tools) or any(
            m.get("role") == "tool" or m.get("tool_calls") for m in messages
        )
        if uses_tools and not template_supports_tools(template):
            messages = hermes_messages(messages, tools)
        elif tools:
            kwargs["tools"] = tools
        special = {
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
        }
        text = render_chat_template(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=special,
            **kwargs,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
            f"eos={sorted(self.eos_token_ids)}, chat_template={self.chat_template is not None})"
        )

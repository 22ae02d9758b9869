"""What a request's output must match (pure Python: the core and the server build these)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(slots=True, frozen=True)
class StructuredOutputParams:
    """Exactly one constraint (vLLM's ``StructuredOutputsParams``).

    ``json``: a JSON schema (dict or its JSON text); ``json_object``: any JSON object;
    ``regex``: the whole output matches it; ``choice``: the output is one of these strings;
    ``grammar``: a Lark grammar (llguidance's dialect) or a GBNF/EBNF grammar (``root ::= ...``).
    """

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        if self.choice is not None:
            if isinstance(self.choice, str) or not all(isinstance(c, str) for c in self.choice):
                raise TypeError("structured_output.choice must be a list of strings")
            if not self.choice:
                raise ValueError("structured_output.choice must not be empty")
            object.__setattr__(self, "choice", tuple(self.choice))
        if self.json is not None:
            object.__setattr__(self, "json", _schema(self.json))
        if not isinstance(self.json_object, bool):
            raise TypeError("structured_output.json_object must be a boolean")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"structured_output.{name} must be a non-empty string")
        given = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(
                f"structured_output takes exactly one of {list(_KINDS)}, got {given or 'none'}"
            )

    @classmethod
    def from_value(cls, value: Any) -> StructuredOutputParams | None:
        """Accept an instance, a dict of its fields, or None."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(_KINDS))
            if unknown:
                raise ValueError(
                    f"unknown structured_output field(s) {unknown}; allowed: {list(_KINDS)}"
                )
            return cls(**value)
        raise TypeError(
            f"structured_output must be a dict or StructuredOutputParams, got {value!r}"
        )

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    @property
    def key(self) -> tuple[str, str]:
        """A hashable identity: equal constraints share one compiled grammar."""
        kind = self.kind
        value = getattr(self, kind)
        if kind == "json":
            return kind, json.dumps(value, sort_keys=True)
        if kind == "choice":
            return kind, json.dumps(list(value))
        return kind, str(value)


def _schema(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"structured_output.json is not valid JSON: {exc}") from exc
    if isinstance(value, bool):  # JSON Schema allows true/false schemas
        return {} if value else {"not": {}}
    if not isinstance(value, dict):
        raise TypeError("structured_output.json must be a JSON schema object")
    return value

"""Structured outputs: JSON schemas, regexes, choices and grammars enforced while sampling.

``StructuredOutputParams`` (pure Python) says what the output must match; the grammar engine
(llguidance, imported only when a request uses a constraint) compiles it once per distinct
constraint and keeps one matcher per sequence. Each step the matcher writes a bitmask of the
tokens allowed next; the sampler sets every other logit to ``-inf``. See docs/structured_outputs.md.
"""

from __future__ import annotations

from .params import StructuredOutputParams

__all__ = ["StructuredOutputParams"]

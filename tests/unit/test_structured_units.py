"""Structured-output pieces without a model: params, Hermes parser, sampler masking, matchers."""

from __future__ import annotations

import json

import pytest
import torch

from pagedllm.entrypoints.openai.tool_parsers import HermesToolParser
from pagedllm.layers.sampler import Sampler, SamplingBatch
from pagedllm.sampling_params import SamplingParams
from pagedllm.structured import StructuredOutputParams


def test_params_take_exactly_one_constraint():
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputParams()
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputParams(regex="a", choice=["a"])
    with pytest.raises(ValueError, match="unknown structured_output"):
        StructuredOutputParams.from_value({"regex": "a", "backend": "x"})
    a = StructuredOutputParams(json='{"type": "object", "b": 1}')
    b = StructuredOutputParams(json={"b": 1, "type": "object"})
    assert a.key == b.key  # one compiled grammar for equal schemas
    params = SamplingParams(structured_output={"choice": ["x", "y"]})
    assert params.structured_output.choice == ("x", "y")


def test_logit_bias_validation():
    assert SamplingParams(logit_bias={"5": 1.5}).logit_bias == {5: 1.5}
    with pytest.raises(ValueError, match=r"logit_bias\[5\]"):
        SamplingParams(logit_bias={5: 100.5})
    with pytest.raises(TypeError, match="logit_bias"):
        SamplingParams(logit_bias={"x": 1})
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={-1: 1})


def _calls(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


def test_hermes_whole_and_streamed_agree():
    text = (
        'Let me check.<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
        '<tool_call>{"name": "g", "arguments": {}}</tool_call>'
    )
    content, calls = HermesToolParser().parse(text)
    assert content.strip() == "Let me check." and _calls(calls) == [("f", {"a": 1}), ("g", {})]
    parser, streamed, shown = HermesToolParser(), [], ""
    for i in range(0, len(text), 3):  # 3-character deltas cut the markers anywhere
        delta, done = parser.feed(text[i : i + 3])
        assert "<" not in delta or "<tool_call>".startswith(delta[delta.index("<") :]) is False
        shown += delta
        streamed += done
    tail, more = parser.finish()
    assert (shown + tail).strip() == "Let me check."
    assert _calls(streamed + more) == _calls(calls)
    assert [c.index for c in streamed + more] == [0, 1]


def test_hermes_keeps_bad_blocks_and_unclosed_calls():
    content, calls = HermesToolParser().parse("<tool_call>{oops}</tool_call> hi")
    assert calls == [] and content == "<tool_call>{oops}</tool_call> hi"
    content, calls = HermesToolParser().parse('<tool_call>{"name": "f", "arguments": {}}')
    assert content == "" and _calls(calls) == [("f", {})]
    content, calls = HermesToolParser().parse("a < b <tool")
    assert content == "a < b <tool" and calls == []


def test_sampler_applies_bias_and_bitmask():
    vocab = 70
    logits = torch.zeros(3, vocab)
    logits[:, 5] = 10.0
    words = torch.full((3, 3), -1, dtype=torch.int32).numpy()
    words[1] = 0
    words[1, 64 // 32] = 1 << (64 % 32)  # row 1: only token 64 allowed
    params = [
        SamplingParams(temperature=0, logit_bias={7: 100}),
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, logit_bias={5: -100, 9: 50}),
    ]
    batch = SamplingBatch.build(params, [[]] * 3, [[]] * 3, [None] * 3, "cpu", vocab,
                                grammar_bitmask=words)  # fmt: skip
    assert not batch.plain_temperature
    assert Sampler()(logits, batch).token_ids.tolist() == [7, 64, 9]


def test_matchers_follow_tokens_and_forks():
    pytest.importorskip("llguidance")
    from pagedllm.loader import load_model_source
    from pagedllm.structured.manager import StructuredOutputManager

    tokenizer = load_model_source(None, "auto", None).tokenizer
    manager = StructuredOutputManager(tokenizer, 49152)
    spec = StructuredOutputParams(choice=["yes", "no"])
    manager.validate(spec)
    manager.validate(StructuredOutputParams(choice=["yes", "no"]))
    assert manager.compiler.compiled == 1  # cached
    yes = tokenizer.encode("yes")
    mask = manager.bitmask(["a", "b"], [spec, None], [[], []])
    allowed = [t for t in range(49152) if (int(mask[0, t // 32]) >> (t % 32)) & 1]
    assert yes[0] in allowed and len(allowed) < 100 and (mask[1] == -1).all()
    mask = manager.bitmask(["a"], [spec], [yes])  # after "yes" only EOS may follow
    allowed = [t for t in range(49152) if (int(mask[0, t // 32]) >> (t % 32)) & 1]
    assert allowed == sorted(tokenizer.eos_token_ids)
    eos = sorted(tokenizer.eos_token_ids)[0]
    mask = manager.bitmask(["a"], [spec], [yes + [eos, eos]])  # ignore_eos: still EOS only
    assert [t for t in range(49152) if (int(mask[0, t // 32]) >> (t % 32)) & 1] == [eos]
    mask = manager.bitmask(["a"], [spec], [[]])  # fewer tokens than seen: replayed afresh
    assert (int(mask[0, yes[0] // 32]) >> (yes[0] % 32)) & 1
    manager.release(["a"])
    assert manager.num_active == 0

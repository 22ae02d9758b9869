"""Structured outputs and logit_bias through ``LLM.generate`` (bundled model, float32, CPU)."""

from __future__ import annotations

import json
import re

import pytest

from e2e_utils import assert_all_blocks_free
from pagedllm import LLM, SamplingParams
from pagedllm.structured import StructuredOutputParams as Constraint

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm():
    with LLM(device="cpu", dtype="float32", max_model_len=512, kv_cache_memory=48 << 20,
             max_num_seqs=64) as engine:  # fmt: skip
        yield engine


def _chat(llm, text: str) -> list[int]:
    return llm.tokenizer.apply_chat_template([{"role": "user", "content": text}])


def test_json_regex_choice_n_and_prefix_cache(llm):
    person = _chat(llm, "Describe a person.")
    params = [
        SamplingParams(temperature=0, max_tokens=48, structured_output=Constraint(json=SCHEMA)),
        SamplingParams(
            temperature=0.9, seed=1, n=3, max_tokens=48, structured_output=Constraint(json=SCHEMA)
        ),  # fmt: skip
        SamplingParams(
            temperature=0, max_tokens=16, structured_output=Constraint(regex=r"[0-9]{3}-[0-9]{4}")
        ),  # fmt: skip
        SamplingParams(
            temperature=0, max_tokens=8, structured_output=Constraint(choice=["left", "right"])
        ),  # fmt: skip
        SamplingParams(
            temperature=0, max_tokens=48, structured_output=Constraint(json_object=True)
        ),
    ]
    prompts = [person, person, _chat(llm, "A phone number?"), _chat(llm, "Which way?"), person]
    outs = llm.generate(prompts, params, use_tqdm=False)
    for comp in outs[0].outputs + outs[1].outputs:
        jsonschema.validate(json.loads(comp.text), SCHEMA)
    assert len(outs[1].outputs) == 3
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", outs[2].outputs[0].text)
    assert outs[3].outputs[0].text in {"left", "right"}
    assert isinstance(json.loads(outs[4].outputs[0].text), dict)
    assert outs[4].metrics.num_cached_tokens > 0  # shared prompt: a prefix hit, same grammar
    assert llm.engine.runner.structured.num_active == 0
    assert_all_blocks_free(llm)


def test_structured_request_leaves_the_batch_unchanged(llm):
    prompts = [_chat(llm, f"Tell me fact number {i} about the sea, in detail.") for i in range(32)]
    plain = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    alone = llm.generate(prompts, plain, use_tqdm=False)
    constrained = SamplingParams(temperature=0, max_tokens=48,
                                 structured_output=Constraint(json=SCHEMA))  # fmt: skip
    mixed = llm.generate(
        [_chat(llm, "Describe a person.")] + prompts, [constrained] + [plain] * 32, use_tqdm=False
    )
    jsonschema.validate(json.loads(mixed[0].outputs[0].text), SCHEMA)
    for a, b in zip(alone, mixed[1:], strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
    assert_all_blocks_free(llm)


def test_grammar_survives_preemption():
    # a pool this small forces recompute preemption while the constrained requests decode
    with LLM(device="cpu", dtype="float32", max_model_len=256, num_gpu_blocks=9,
             block_size=16, enable_prefix_caching=False) as small:  # fmt: skip
        prompts = [_chat(small, f"Describe person {i}.") for i in range(4)]
        params = SamplingParams(temperature=0, max_tokens=48,
                                structured_output=Constraint(json=SCHEMA))  # fmt: skip
        outs = small.generate(prompts, params, use_tqdm=False)
        assert small.engine.scheduler.num_preemptions > 0
        for out in outs:
            jsonschema.validate(json.loads(out.outputs[0].text), SCHEMA)
        assert_all_blocks_free(small)


def test_logit_bias(llm):
    prompt = _chat(llm, "Say hello.")
    base = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)
    first = base[0].outputs[0].token_ids[0]
    banned = SamplingParams(temperature=0, max_tokens=6, logit_bias={first: -100})
    assert first not in llm.generate([prompt], banned, use_tqdm=False)[0].outputs[0].token_ids
    forced = SamplingParams(temperature=0.8, seed=3, max_tokens=6, logit_bias={1234: 100})
    assert llm.generate([prompt], forced, use_tqdm=False)[0].outputs[0].token_ids == [1234] * 6
    with pytest.raises(ValueError, match="logit_bias"):
        llm.generate([prompt], SamplingParams(logit_bias={10**7: 1.0}), use_tqdm=False)
    with pytest.raises(ValueError, match="regex"):
        bad = SamplingParams(structured_output=Constraint(regex="(unclosed"))
        llm.generate([prompt], bad, use_tqdm=False)
    assert_all_blocks_free(llm)


def test_finished_grammar_overrides_min_tokens(llm):
    """A grammar that has finished allows only EOS; min_tokens must not ban it then (vLLM's
    behaviour: the constraint wins), so the answer ends cleanly instead of sampling from a row
    where every token is -inf."""
    params = SamplingParams(temperature=0, max_tokens=20, min_tokens=10,
                            structured_output=Constraint(choice=["yes", "no"]))  # fmt: skip
    out = llm.generate([_chat(llm, "Is the sky blue? Answer yes or no.")], params,
                       use_tqdm=False)[0].outputs[0]  # fmt: skip
    assert out.text in ("yes", "no")
    assert out.finish_reason == "stop"
    # the answer's tokens and one EOS: nothing sampled from an all -inf row (token 0 before)
    assert len(out.token_ids) <= 3 and 0 not in out.token_ids, out.token_ids
    assert_all_blocks_free(llm)

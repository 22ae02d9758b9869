"""Bad input raises ValueError/TypeError naming what to change, and the engine keeps serving.

Also: a model step that raises fails only the requests it scheduled, frees their blocks, and
the engine then serves new requests normally.
"""

from __future__ import annotations

import json

import pytest

from e2e_utils import assert_all_blocks_free, hf_greedy
from pagedllm import LLM, SamplingParams

MAX_MODEL_LEN = 256
CHECK_TOKENS = 8
QUICK_TOKENS = 4  # the check after each error: short, to keep the suite fast
GREEDY = SamplingParams(temperature=0.0, max_tokens=CHECK_TOKENS)


@pytest.fixture(scope="module")
def llm():
    # max_num_seqs=2: a third request waits, so a failing step can be shown to spare it
    return LLM(
        dtype="float32", kv_cache_memory=32 << 20, max_model_len=MAX_MODEL_LEN, max_num_seqs=2
    )


@pytest.fixture(scope="module")
def check_prompt(llm):
    return llm.tokenizer.encode("The capital of France is", add_special_tokens=True)


def assert_serves_normally(llm: LLM, prompt: list[int], hf_model) -> None:
    """Nothing is left queued or held, and a plain request still matches transformers."""
    assert_all_blocks_free(llm)
    out = llm.generate([prompt], GREEDY.clone(max_tokens=QUICK_TOKENS), use_tqdm=False)[0]
    assert out.outputs[0].token_ids == hf_greedy(hf_model, prompt, CHECK_TOKENS)[:QUICK_TOKENS]
    assert out.outputs[0].finish_reason == "length"
    assert_all_blocks_free(llm)


# --------------------------------------------------------- SamplingParams
BAD_PARAMS = [
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(max_tokens=0), ValueError, "max_tokens"),
    (dict(n=0), ValueError, "n must"),
    (dict(top_k=-3), ValueError, "top_k"),
    (dict(min_tokens=9, max_tokens=4), ValueError, "min_tokens"),
    (dict(logprobs=21), ValueError, "logprobs"),
    (dict(stop=[""]), ValueError, "stop"),
]


def test_invalid_sampling_params(llm, check_prompt, hf_model):
    # SamplingParams never reach the engine: one serving check after all of them is enough
    for kwargs, exc, field in BAD_PARAMS:
        with pytest.raises(exc, match=field):
            SamplingParams(**kwargs)
        with pytest.raises(exc, match=field):
            SamplingParams.from_dict(kwargs)
        with pytest.raises(exc, match=field):  # clone() validates again
            GREEDY.clone(**kwargs)
    assert_serves_normally(llm, check_prompt, hf_model)


def test_unknown_sampling_key_is_named(llm, check_prompt, hf_model):
    with pytest.raises(ValueError, match="temprature") as info:
        SamplingParams.from_dict({"temprature": 0.5, "max_tokens": 4})
    assert "temperature" in str(info.value)  # the allowed names help the user fix the typo
    assert_serves_normally(llm, check_prompt, hf_model)


# ----------------------------------------------------------------- prompts
@pytest.mark.parametrize(
    ("prompt", "exc", "words"),
    [
        ([7] * (MAX_MODEL_LEN + 10), ValueError, "max_model_len"),
        ([7] * MAX_MODEL_LEN, ValueError, "max_model_len"),  # no room for one output token
        ([[]], ValueError, "empty"),
        ("", ValueError, "empty"),
        ([1, 2, 10**6], ValueError, "vocabulary"),
        ([1, -1, 2], ValueError, "vocabulary"),
        ([1, "two", 3], TypeError, "token ids must be integers"),
        (3.5, TypeError, "prompt"),
    ],
    ids=[
        "too-long",
        "exactly-max-len",
        "empty-ids",
        "empty-text",
        "oov",
        "negative",
        "str-id",
        "float",
    ],
)
def test_invalid_prompt(prompt, exc, words, llm, check_prompt, hf_model):
    with pytest.raises(exc, match=words):
        llm.generate(prompt, GREEDY, use_tqdm=False)
    assert_serves_normally(llm, check_prompt, hf_model)


def test_bad_prompt_in_a_batch_queues_nothing(llm, check_prompt, hf_model):
    # the first prompt is queued before the second is rejected: it must be given back
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate([check_prompt, [5, 10**7]], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="SamplingParams"):
        llm.generate([check_prompt, check_prompt], [GREEDY] * 3, use_tqdm=False)
    assert_serves_normally(llm, check_prompt, hf_model)


def test_bad_chat_messages(llm, check_prompt, hf_model):
    with pytest.raises(ValueError, match="role"):
        llm.chat([{"role": "wizard", "content": "hi"}], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="content"):
        llm.chat([{"role": "user"}], GREEDY, use_tqdm=False)
    assert_serves_normally(llm, check_prompt, hf_model)


# ------------------------------------------------------------------ models
def test_missing_model_path(tmp_path, llm, check_prompt, hf_model):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match="does not exist") as info:
        LLM(model=str(missing), dtype="float32")
    assert "no-such-model" in str(info.value)
    assert_serves_normally(llm, check_prompt, hf_model)


def test_unsupported_architecture(tmp_path, llm, check_prompt, hf_model):
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": 64,
        "n_head": 4,
        "n_layer": 2,
        "vocab_size": 256,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as info:
        LLM(model=str(tmp_path), dtype="float32")
    assert "LlamaForCausalLM" in str(info.value)  # says what is supported
    assert_serves_normally(llm, check_prompt, hf_model)


def test_bad_engine_options():
    with pytest.raises(ValueError, match="block_size"):
        LLM(block_size=0)
    with pytest.raises(ValueError, match="dtype"):
        LLM(dtype="float64")
    with pytest.raises(ValueError, match="max_num_seqs"):
        LLM(max_num_seqs=0)


# ------------------------------------------------------------- step errors
def test_failing_step_fails_only_scheduled_requests(llm, check_prompt, hf_model, monkeypatch):
    engine = llm.engine
    model = engine.runner.model
    real_forward = model.forward
    calls = {"n": 0}

    def flaky_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky_forward)
    params = GREEDY
    engine.add_request("a", None, params, prompt_token_ids=check_prompt)
    engine.add_request("b", None, params, prompt_token_ids=[1, 2, 3, 4, 5])
    engine.add_request("c", None, params, prompt_token_ids=check_prompt)  # waits: max_num_seqs=2
    outputs = engine.step()
    assert calls["n"] == 1
    failed = {o.request_id: o for o in outputs}
    assert set(failed) == {"a", "b"}, "only the two scheduled requests fail"
    for out in failed.values():
        assert out.finished
        assert out.outputs[0].finish_reason == "error"
        assert "injected failure" in (out.error or "")
    assert engine.scheduler.kv_manager.usage() == 0.0, "the failed requests' blocks are freed"
    finals = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
    assert set(finals) == {"c"}
    assert finals["c"].outputs[0].token_ids == hf_greedy(hf_model, check_prompt, CHECK_TOKENS)
    assert_serves_normally(llm, check_prompt, hf_model)


def test_failing_step_in_generate_returns_error_outputs(llm, check_prompt, hf_model, monkeypatch):
    model = llm.engine.runner.model
    real_forward = model.forward
    calls = {"n": 0}

    def flaky_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # fails mid-decode, after some tokens were produced
            raise RuntimeError("boom in decode")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky_forward)
    out = llm.generate([check_prompt], GREEDY, use_tqdm=False)[0]
    assert out.finished and out.outputs[0].finish_reason == "error"
    assert "boom in decode" in out.error
    assert 0 < len(out.outputs[0].token_ids) < CHECK_TOKENS
    monkeypatch.setattr(model, "forward", real_forward)
    assert_serves_normally(llm, check_prompt, hf_model)

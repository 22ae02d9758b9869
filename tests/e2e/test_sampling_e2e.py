"""Sampling, stopping, logprobs, n > 1 forks, streaming and chat on the bundled model."""

from __future__ import annotations

import pytest
import torch

from e2e_utils import assert_all_blocks_free, chat_ids, hf_greedy
from pagedllm import LLM, SamplingParams

PROMPT = "The capital of France is"
SEEDED = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=12, ignore_eos=True)
GREEDY = SamplingParams(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def llm():
    engine = LLM(dtype="float32", kv_cache_memory=32 << 20, block_size=16)
    yield engine
    assert_all_blocks_free(engine)


@pytest.fixture(scope="module")
def greedy_ref(llm):
    """The plain greedy completion of PROMPT (16 tokens, no stop condition reached)."""
    out = llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 16
    return out


def _one(llm: LLM, prompt, params: SamplingParams):
    return llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]


def _hf_logprobs(hf_model, ids: list[int]) -> torch.Tensor:
    """log_softmax of transformers' float32 logits: row i predicts token i + 1."""
    with torch.inference_mode():
        logits = hf_model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


# ------------------------------------------------------------------ seeds
def test_seeded_sampling_is_reproducible_across_batches(llm):
    alone = _one(llm, PROMPT, SEEDED)
    assert len(alone.token_ids) == SEEDED.max_tokens
    others = [
        SamplingParams(temperature=0.7, seed=5, max_tokens=8),
        SamplingParams(temperature=1.0, max_tokens=14, ignore_eos=True),  # unseeded
        GREEDY.clone(max_tokens=6),
    ]
    # second in a batch of different requests
    batch = llm.generate(
        ["Once upon a time", PROMPT, "List three colors:"],
        [others[0], SEEDED, others[1]],
        use_tqdm=False,
    )
    assert batch[1].outputs[0].token_ids == alone.token_ids
    assert batch[1].outputs[0].text == alone.text
    # other companions, other positions, and the same seed twice in one batch
    batch = llm.generate(
        [PROMPT, "Hello", "Once upon a time", PROMPT],
        [SEEDED, others[2], others[1], SEEDED],
        use_tqdm=False,
    )
    assert batch[0].outputs[0].token_ids == alone.token_ids
    assert batch[3].outputs[0].token_ids == alone.token_ids
    assert batch[3].outputs[0].text == alone.text
    assert_all_blocks_free(llm)


def test_different_seeds_differ(llm):
    seeds = (1234, 1235, 1236)
    outs = llm.generate([PROMPT] * 3, [SEEDED.clone(seed=seed) for seed in seeds], use_tqdm=False)
    texts = {o.outputs[0].text for o in outs}
    assert len(texts) == 3, "three seeds at temperature 1 should give three different texts"
    assert outs[0].outputs[0].text == _one(llm, PROMPT, SEEDED).text


# ------------------------------------------------------------ n > 1 forks
def test_n4_gives_four_completions(llm):
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)
    out = llm.generate(PROMPT, params, use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 8 and c.finish_reason == "length" for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1, "samples must not be copies"
    again = llm.generate(PROMPT, params, use_tqdm=False)[0]  # seeded: reproducible per sample
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    assert_all_blocks_free(llm)


def test_n4_children_share_prompt_blocks(llm):
    engine = llm.engine
    kv = engine.scheduler.kv_manager
    prompt = llm.tokenizer.encode("A long shared prompt. " * 12, add_special_tokens=True)
    num_full = len(prompt) // kv.block_size
    assert num_full >= 2 and len(prompt) % kv.block_size, "want full blocks and a partial one"
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=6, ignore_eos=True)
    engine.add_request("fork-check", prompt, params)
    group = engine._groups["fork-check"]
    for _ in range(20):
        engine.step()
        if len(group.samples) == 4:
            break
    assert len(group.samples) == 4, "the children should fork once the prompt is computed"
    ids = [s.request.request_id for s in group.samples]
    tables = [kv.get_block_table(i) for i in ids]
    parent = tables[0]
    assert len(parent) == num_full + 1
    for table in tables[1:]:
        assert table == parent  # right after the fork everything, partial block too, is shared
    for block_id in parent:
        assert kv.pool.blocks[block_id].ref_cnt == 4
    engine.step()  # each sample writes its next token into the partial block: copy-on-write
    tables = [kv.get_block_table(i) for i in ids]
    for table in tables:
        assert table[:num_full] == parent[:num_full]
    assert len({t[num_full] for t in tables}) == 4, "the partial block must be copied per sample"
    for block_id in parent[:num_full]:
        assert kv.pool.blocks[block_id].ref_cnt == 4
    while engine.has_unfinished_requests():
        engine.step()
    assert_all_blocks_free(llm)


# --------------------------------------------------------------- stopping
def test_stop_string(llm, greedy_ref):
    text = greedy_ref.text
    words = [w for w in text.split() if w.isalpha() and len(w) >= 3 and text.index(w) > 3]
    stop = words[0]
    cut = text.index(stop)
    out = _one(llm, PROMPT, GREEDY.clone(stop=["never-appears-xyz", stop]))
    assert out.text == text[:cut]
    assert out.finish_reason == "stop"
    assert out.stop_reason == stop
    assert out.token_ids == greedy_ref.token_ids[: len(out.token_ids)]
    assert len(out.token_ids) < len(greedy_ref.token_ids)
    kept = _one(llm, PROMPT, GREEDY.clone(stop=[stop], include_stop_str_in_output=True))
    assert kept.text == text[: cut + len(stop)]
    assert_all_blocks_free(llm)


def test_stop_token_ids(llm, greedy_ref):
    ids = greedy_ref.token_ids
    j = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    out = _one(llm, PROMPT, GREEDY.clone(stop_token_ids=[ids[j]]))
    assert out.token_ids == ids[: j + 1]
    assert out.finish_reason == "stop"
    assert out.stop_reason == ids[j]
    assert_all_blocks_free(llm)


def test_max_tokens_finishes_with_length(llm, greedy_ref):
    out = _one(llm, PROMPT, GREEDY.clone(max_tokens=5))
    assert out.token_ids == greedy_ref.token_ids[:5]
    assert out.finish_reason == "length"
    assert out.stop_reason is None


def test_min_tokens_suppresses_eos(llm, hf_tokenizer):
    prompt = chat_ids(hf_tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    eos = set(llm.engine.eos_token_ids)
    free = _one(llm, prompt, SamplingParams(temperature=0.0, max_tokens=20))
    assert free.finish_reason == "stop" and free.stop_reason is None
    assert free.token_ids[-1] in eos
    natural = len(free.token_ids)
    assert natural < 14, "this prompt is chosen for its short answer"
    out = _one(llm, prompt, SamplingParams(temperature=0.0, max_tokens=18, min_tokens=14))
    assert len(out.token_ids) >= 14
    assert not eos & set(out.token_ids[:14]), "EOS must not appear before min_tokens"
    assert out.token_ids[: natural - 1] == free.token_ids[:-1]
    assert_all_blocks_free(llm)


# --------------------------------------------------------------- logprobs
def test_logprobs_match_transformers(llm, hf_model):
    prompt = llm.tokenizer.encode(PROMPT, add_special_tokens=True)
    k = 3
    params = SamplingParams(temperature=0.8, seed=11, max_tokens=10, ignore_eos=True, logprobs=k)
    out = _one(llm, prompt, params)
    assert len(out.logprobs) == len(out.token_ids) == 10
    ref = _hf_logprobs(hf_model, prompt + out.token_ids)
    for i, (token, entry) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        row = ref[len(prompt) + i - 1]
        assert token in entry and len(entry) >= k
        assert entry[token] == pytest.approx(row[token].item(), abs=1e-3)
        top = torch.topk(row, k)
        for token_id, value in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            assert entry[token_id] == pytest.approx(value, abs=1e-3)
    assert out.cumulative_logprob == pytest.approx(
        sum(e[t] for t, e in zip(out.token_ids, out.logprobs, strict=True)), abs=1e-3
    )


def test_prompt_logprobs_match_transformers(llm, hf_model):
    prompt = llm.tokenizer.encode(
        "Paged memory splits the cache into blocks", add_special_tokens=True
    )
    result = llm.generate(prompt, SamplingParams(max_tokens=1, prompt_logprobs=2), use_tqdm=False)[
        0
    ]
    lps = result.prompt_logprobs
    assert len(lps) == len(prompt) and lps[0] is None
    ref = _hf_logprobs(hf_model, prompt)
    for i in range(1, len(prompt)):
        assert prompt[i] in lps[i]
        assert lps[i][prompt[i]] == pytest.approx(ref[i - 1, prompt[i]].item(), abs=1e-3)
        best = int(ref[i - 1].argmax())
        assert lps[i][best] == pytest.approx(ref[i - 1, best].item(), abs=1e-3)
    assert_all_blocks_free(llm)


# -------------------------------------------------------- streaming, chat
def test_stream_deltas_concatenate_to_final(llm, greedy_ref):
    outputs = list(llm.stream(PROMPT, GREEDY))
    assert len(outputs) > 2 and outputs[-1].finished
    assert not any(o.finished for o in outputs[:-1])
    final = outputs[-1].outputs[0]
    assert "".join(o.outputs[0].delta_text for o in outputs) == final.text == greedy_ref.text
    assert [t for o in outputs for t in o.outputs[0].delta_token_ids] == final.token_ids
    assert_all_blocks_free(llm)


def test_chat_with_list_of_conversations(llm, hf_model, hf_tokenizer):
    conversations = [
        [{"role": "user", "content": "What is 12 times 12?"}],
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a primary color."},
        ],
    ]
    outs = llm.chat(conversations, SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    assert len(outs) == 2
    for conv, out in zip(conversations, outs, strict=True):
        prompt = chat_ids(hf_tokenizer, conv)
        assert out.prompt_token_ids == prompt
        want = hf_greedy(hf_model, prompt, 8)
        got = out.outputs[0].token_ids
        # the engine stops at EOS, transformers pads after it: compare up to our stop
        assert got == want[: len(got)] and (len(got) == 8 or got[-1] in llm.engine.eos_token_ids)
    assert_all_blocks_free(llm)

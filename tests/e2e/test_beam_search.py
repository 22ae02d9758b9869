"""Beam search in the engine equals transformers' ``generate(num_beams=k, do_sample=False)``
(same sequences in the same order, scores within 1e-4) in float32, on tiny random Llama and
Qwen3 checkpoints (with and without EOS ending beams early) and on the bundled model; beams
share pages, run in one batch with ordinary requests, and give every block back."""

from __future__ import annotations

import json

import pytest
import torch
from test_tiny_models import VOCAB, _save_tiny_model

from e2e_utils import assert_all_blocks_free
from pagedllm import LLM, SamplingParams
from pagedllm.engine.beam_search import BeamSearchParams

MAX_NEW = 8
WIDTHS = (2, 4, 8)


def _hf_beams(model, prompt, k, max_new, length_penalty, eos):
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            num_beams=k,
            num_return_sequences=k,
            do_sample=False,
            early_stopping=False,
            length_penalty=length_penalty,
            max_new_tokens=max_new,
            eos_token_id=eos,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_scores=True,
        )
    seqs = []
    stops = [] if eos is None else [eos] if isinstance(eos, int) else eos
    for row in out.sequences[:, len(prompt) :].tolist():
        ends = [i for i, t in enumerate(row) if t in stops]
        seqs.append(row[: ends[0] + 1] if ends else row)
    return seqs, out.sequences_scores.tolist()


def _check(got, want_seqs, want_scores, label):
    assert [s.output_token_ids for s in got.sequences] == want_seqs, label
    for seq, score in zip(got.sequences, want_scores, strict=True):
        assert abs(seq.score - score) < 1e-4, (label, seq.score, score)


@pytest.fixture(scope="module", params=["llama3", "qwen3"])
def tiny(request, tmp_path_factory):
    """A tiny checkpoint whose EOS is a token its beams often reach within MAX_NEW steps."""
    directory = tmp_path_factory.mktemp(request.param)
    hf = _save_tiny_model(request.param, directory)
    # EOS: the token the beams (searched without EOS) produce most often before the end
    counts: dict[int, int] = {}
    for prompt in _prompts():
        for seq in _hf_beams(hf, prompt, 4, MAX_NEW, 1.0, None)[0]:
            for token in seq[1:-1]:
                counts[token] = counts.get(token, 0) + 1
    eos = max(counts, key=counts.get)
    config = json.loads((directory / "config.json").read_text())
    config["eos_token_id"] = eos
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "generation_config.json").unlink(missing_ok=True)
    hf.generation_config.eos_token_id = None
    llm = LLM(model=str(directory), dtype="float32", block_size=4, num_gpu_blocks=400)
    assert eos in llm.engine.eos_token_ids
    return hf, llm, eos, directory


def _prompts():
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in (5, 13)]


@pytest.mark.parametrize("use_eos", [True, False])
def test_beams_match_transformers(tiny, use_eos):
    hf, llm, eos, _ = tiny
    prompts = _prompts()
    finished_early = 0
    for k in WIDTHS:
        for lp in (1.0, 0.5) if k == 4 else (1.0,):
            params = BeamSearchParams(k, MAX_NEW, length_penalty=lp, ignore_eos=not use_eos)
            outs = llm.beam_search(prompts, params)  # the prompts' beams share one batch
            for prompt, got in zip(prompts, outs, strict=True):
                want, scores = _hf_beams(hf, prompt, k, MAX_NEW, lp, eos if use_eos else None)
                _check(got, want, scores, f"k={k} lp={lp} eos={use_eos} len={len(prompt)}")
                finished_early += sum(len(s) < MAX_NEW for s in want)
            assert_all_blocks_free(llm)
    assert (finished_early > 0) == use_eos, "EOS was meant to end some beams early"


def test_beams_mixed_with_sampling_equal_alone(tiny):
    _, llm, _, _ = tiny
    prompts = _prompts()
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    seeded = SamplingParams(temperature=0.8, n=3, seed=5, max_tokens=MAX_NEW, ignore_eos=True)
    beams = BeamSearchParams(4, MAX_NEW)
    alone = [llm.generate([p], [q], use_tqdm=False)[0] for p, q in
             [(prompts[0], greedy), (prompts[1], seeded), (prompts[0], beams)]]  # fmt: skip
    mixed = llm.generate(
        [prompts[0], prompts[1], prompts[0]], [greedy, seeded, beams], use_tqdm=False
    )
    for a, m in zip(alone, mixed, strict=True):
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in m.outputs]
        assert [c.score for c in a.outputs] == pytest.approx([c.score for c in m.outputs])
    assert len(mixed[2].outputs) == 4
    assert_all_blocks_free(llm)


def test_beams_share_pages_and_pruned_beams_free_them(tiny):
    """Beams of a long prompt hold far fewer blocks than k private copies would."""
    _, llm, _, _ = tiny
    prompt = list(range(1, 61))  # 15 blocks of 4 tokens
    engine = llm.engine
    kv = engine.scheduler.kv_manager
    engine.add_request("b", None, BeamSearchParams(8, MAX_NEW), prompt_token_ids=prompt)
    peak = 0
    while engine.has_unfinished_requests():
        engine.step()
        peak = max(peak, kv.num_blocks - kv.num_free_blocks)
    unshared = 8 * -(-(len(prompt) + MAX_NEW) // 4)  # every beam with its own copy
    assert peak <= 15 + 8 * 3, (peak, unshared)  # the prompt once, a few private blocks each
    assert_all_blocks_free(llm)


def test_bad_beam_input(tiny):
    _, llm, _, _ = tiny
    with pytest.raises(ValueError, match="beam_width"):
        BeamSearchParams(0)
    with pytest.raises(TypeError, match="beam_width"):
        BeamSearchParams(2.0)
    with pytest.raises(ValueError, match="max_tokens"):
        BeamSearchParams(2, max_tokens=0)
    with pytest.raises(ValueError, match="max_num_seqs"):
        llm.engine.scheduler.config.max_num_seqs, _ = 4, None
        try:
            llm.beam_search([[1, 2, 3]], BeamSearchParams(8, 4))
        finally:
            llm.engine.scheduler.config.max_num_seqs = 256
    with pytest.raises(TypeError, match="BeamSearchParams"):
        llm.beam_search([[1, 2, 3]], SamplingParams())
    assert_all_blocks_free(llm)


def test_bundled_model_beams_match_transformers(hf_model):
    from e2e_utils import bundled_dir

    llm = LLM(model=str(bundled_dir()), dtype="float32", num_gpu_blocks=256)
    prompt = llm.tokenizer.encode("The capital of France is")
    for k in WIDTHS:
        got = llm.beam_search([prompt], BeamSearchParams(k, 6))[0]
        eos = sorted(llm.engine.eos_token_ids)
        want, scores = _hf_beams(hf_model, prompt, k, 6, 1.0, eos)
        _check(got, want, scores, f"bundled k={k}")
    assert_all_blocks_free(llm)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_beams_under_preemption_equal_unpressured(tiny, mode):
    """A pool too small for every beam at once: beams are preempted (held ones too) and the
    search still returns what it returns with room."""
    _, llm, _, directory = tiny
    prompts = _prompts() + [list(range(1, 30))]
    params = BeamSearchParams(4, MAX_NEW)
    want = [[s.output_token_ids for s in o.sequences] for o in llm.beam_search(prompts, params)]
    small = LLM(model=str(directory), dtype="float32", block_size=4, num_gpu_blocks=24,
                preemption_mode=mode, swap_space=1 << 20)  # fmt: skip
    got = [[s.output_token_ids for s in o.sequences] for o in small.beam_search(prompts, params)]
    assert small.engine.scheduler.num_preemptions > 0, "the small pool was meant to preempt"
    assert got == want
    assert_all_blocks_free(small)

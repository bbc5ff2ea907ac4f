"""HF rollout engine: sampling with the project's mRoPE positions, logprobs at the sampling
temperature, n completions per prompt, seeding, EOS-first completions, bit-exact weight updates."""

import pytest
import torch
from _helpers import EOS, IMAGE_PAD, first_token_lm_head, max_gap, perturbed

from megatron_vrft.config import RolloutConfig
from megatron_vrft.rollout.base import RolloutError, SamplingParams
from megatron_vrft.rollout.hf import filter_logits, sample_next


def test_sampling_params_from_config_and_validation():
    sp = SamplingParams.from_config(RolloutConfig(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=7), n=4, seed=3)
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_new_tokens, sp.seed) == (4, 0.7, 0.9, 5, 7, 3)
    seeds = [sp.prompt_seed(i) for i in range(3)]
    assert len(set(seeds)) == 3 and all(abs(a - b) >= sp.n for a in seeds for b in seeds if a != b)
    for bad in ({"n": 0}, {"top_p": 0.0}, {"top_k": 0}, {"temperature": -1.0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)


def test_filter_logits_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    inf = float("-inf")
    assert filter_logits(logits, 2, 1.0).isinf().tolist() == [[False, False, True, True]]
    # top-p 0.8: 0.5 + 0.3 reaches it -> 2 tokens; 0.81 needs the third
    assert torch.isinf(filter_logits(logits, -1, 0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, -1, 0.81)).tolist() == [[False, False, False, True]]
    assert filter_logits(logits, -1, 0.1)[0, 0] == logits[0, 0] and filter_logits(logits, -1, 0.1)[0, 1] == inf
    tok, lp = sample_next(logits, SamplingParams(top_k=2, temperature=1.0), torch.Generator().manual_seed(0))
    assert lp.item() == pytest.approx(torch.log(torch.tensor([0.5, 0.3]) / 0.8)[tok.item()].item(), abs=1e-6)


def test_make_engine(model_dir, hf_config):
    from megatron_vrft.config import RunConfig
    from megatron_vrft.rollout.base import make_engine
    from megatron_vrft.rollout.hf import HFEngine

    cfg = RunConfig()
    cfg.rollout.engine, cfg.model.dtype = "hf", "fp32"
    eng = make_engine(cfg, hf_config, model_dir)
    assert isinstance(eng, HFEngine) and eng.stop_ids.tolist() == [EOS]
    assert next(eng.model.parameters()).dtype == torch.float32
    cfg.rollout.engine = "sglang"
    with pytest.raises(RolloutError, match="rollout.engine"):
        make_engine(cfg, hf_config, model_dir)


@pytest.mark.parametrize("name", ["text", "image", "video", "clip", "both"])
def test_logprobs_match_teacher_forced(hf_engine, prompts, name):
    """Engine logprobs = teacher-forced log_softmax(logits / T) with the project's positions."""
    item = prompts[name]
    for temperature in (1.0, 0.7):
        (group,) = hf_engine.generate([item], SamplingParams(n=2, temperature=temperature, max_new_tokens=6, seed=1))
        for c in group:
            ref = hf_engine.score(item.sequence, c.token_ids, temperature)
            assert max_gap(ref, c.logprobs) <= 1e-4


@pytest.mark.parametrize("name", ["text", "video"])
def test_temperature_zero_is_greedy(hf_engine, prompts, name):
    """T = 0: every token is the argmax of the teacher-forced logits (ties aside), its logprob the
    T = 1 log_softmax, the same for all n completions and independent of the seed."""
    from megatron_vrft.data.packing import grpo_item
    from megatron_vrft.rollout.hf import _media_kwargs

    item = prompts[name]
    (group,) = hf_engine.generate([item], SamplingParams(n=2, temperature=0.0, max_new_tokens=6, seed=1))
    (other,) = hf_engine.generate([item], SamplingParams(n=1, temperature=0.0, max_new_tokens=6, seed=2))
    c = group[0]
    assert c.token_ids.tolist() == group[1].token_ids.tolist() == other[0].token_ids.tolist()
    seq = item.sequence
    full = grpo_item(seq, c.token_ids)
    with torch.no_grad():
        logits = hf_engine.model(input_ids=full.input_ids[None], position_ids=full.position_ids[:, None, :],
                                 **_media_kwargs(seq)).logits[0].float()
    steps = logits[len(seq) - 1: len(full) - 1]
    assert steps.argmax(-1).tolist() == c.token_ids.tolist()
    assert max_gap(hf_engine.score(seq, c.token_ids, 0.0), c.logprobs) <= 1e-4


def test_video_positions_are_the_projects_not_transformers(hf_engine, prompts):
    """After a video whose temporal extent exceeds the spatial one, transformers 5.23 places text
    elsewhere; the engine must use the trainer's positions (its scores differ from HF's own)."""
    from megatron_vrft.rollout.hf import _media_kwargs

    seq = prompts["video"].sequence
    (group,) = hf_engine.generate([prompts["video"]], SamplingParams(n=1, max_new_tokens=4, seed=0))
    ids = torch.cat([seq.input_ids, group[0].token_ids])[None]
    mm = torch.zeros_like(ids)
    mm[ids == seq.input_ids.new_tensor(269)] = 2
    with torch.no_grad():
        own = hf_engine.model(input_ids=ids, mm_token_type_ids=mm, second_per_grid_ts=seq.second_per_grid_ts,
                              **_media_kwargs(seq)).logits[0].float()
    own_lp = torch.log_softmax(own[len(seq) - 1:-1], -1).gather(1, group[0].token_ids[:, None])[:, 0]
    assert (own_lp - group[0].logprobs).abs().max() > 1e-3
    assert (hf_engine.score(seq, group[0].token_ids) - group[0].logprobs).abs().max() <= 1e-4


def test_n_completions_and_seeding(hf_engine, prompts):
    items = [prompts["image"], prompts["text"]]
    sp = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=5)
    a, b = hf_engine.generate(items, sp), hf_engine.generate(items, sp)
    c = hf_engine.generate(items, SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=6))
    assert [len(g) for g in a] == [3, 3]
    ids = lambda groups: [[x.token_ids.tolist() for x in g] for g in groups]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert len({tuple(x) for x in ids(a)[0]}) == 3  # a group's completions are independent samples
    for g in a:
        for x in g:
            assert x.token_ids.dtype == torch.long and x.logprobs.dtype == torch.float32
            assert len(x.logprobs) == len(x) == 8 and x.finish_reason == "length"


def test_prompts_decode_as_one_batch(hf_engine, prompts):
    """Prompts of different lengths (71-115 tokens, left-padded KV, padded keys masked) decode as one
    batch: each prompt's completions are those it gets alone (same tokens, logprobs within 1e-6)
    and match teacher-forced scores; without the key mask the padded prompts' logprobs are off by ~1."""
    names = ["text", "image", "video", "clip", "both"]
    items = [prompts[k] for k in names]
    assert len({len(it.sequence) for it in items}) == len(items)
    sp = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    batched = hf_engine.generate(items, sp)
    for i, item in enumerate(items):
        (alone,) = hf_engine._generate_batch([item.sequence], sp, [torch.Generator().manual_seed(sp.prompt_seed(i))])
        for a, b in zip(batched[i], alone):
            assert a.token_ids.tolist() == b.token_ids.tolist() and a.finish_reason == b.finish_reason
            assert max_gap(a.logprobs, b.logprobs) <= 1e-6
            assert max_gap(hf_engine.score(item.sequence, a.token_ids), a.logprobs) <= 1e-4


def test_eos_first_media_cut_and_bit_exact_updates(hf_engine, prompts):
    original = {k: v.clone() for k, v in hf_engine.state_dict().items()}
    try:
        new = perturbed(original, seed=1)
        hf_engine.update_weights(new.items())
        assert all(torch.equal(hf_engine.state_dict()[k], new[k]) for k in new)
        hf_engine.update_weights([("lm_head.weight", first_token_lm_head(hf_engine, prompts["image"]))])
        (group,) = hf_engine.generate([prompts["image"]], SamplingParams(n=2, max_new_tokens=5, seed=0))
        for c in group:
            assert c.token_ids.tolist() == [EOS] and c.finish_reason == "stop" and c.text == ""
            assert c.logprobs.shape == (1,) and c.logprobs[0] > -1e-3
        # a sampled media placeholder ends the completion before it: here an empty one
        hf_engine.update_weights([("lm_head.weight", new["lm_head.weight"])])
        hf_engine.update_weights([("lm_head.weight", first_token_lm_head(hf_engine, prompts["image"], IMAGE_PAD))])
        (group,) = hf_engine.generate([prompts["image"]], SamplingParams(n=2, max_new_tokens=5, seed=0))
        for c in group:
            assert len(c) == 0 and c.logprobs.shape == (0,) and c.finish_reason == "length" and c.text == ""
    finally:
        hf_engine.update_weights(original.items())
    assert all(torch.equal(hf_engine.state_dict()[k], original[k]) for k in original)
    with pytest.raises(RolloutError, match="no parameter"):
        hf_engine.update_weights([("model.layers.99.mlp.up_proj.weight", torch.zeros(1))])
    with pytest.raises(RolloutError, match="shape"):
        hf_engine.update_weights([("lm_head.weight", torch.zeros(2, 2))])

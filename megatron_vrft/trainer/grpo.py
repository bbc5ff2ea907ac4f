"""The GRPO step: ``grpo_step(run, batch) -> metrics``, the step function ``loop.train`` runs in mode grpo.

One step on this DP rank's prompts (`grpo_data.PromptBatch`; frames decoded once, they feed the
engine and the trainer):

    rollout      the replica leader's engine samples G completions per prompt; shared with the replica
    reward       the configured rewards start (a background reward, the LLM judge, keeps running ...)
    logprob      ... while the old-policy pass (only when updates_per_rollout > 1) and the frozen
                 reference pass (only when kl_beta > 0) run
    reward       the rewards are joined and shared; group advantages
    update       updates_per_rollout optimizer steps, one per mini-batch
    weight_sync  the updated weights streamed to the engine (frozen ones were sent once, at build)

Parallel layout, loss normalisation and ViT reuse: `grpo_data`, `grpo_passes`. Metrics are global
(all DP ranks) and the same on every rank; docs/grpo.md lists them.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megatron_vrft.algos import group_advantages
from megatron_vrft.trainer.grpo_data import Rollout, build_rollout, reward_columns, share_completions
from megatron_vrft.trainer.grpo_passes import logprob_pass, update_pass

__all__ = ["grpo_step"]


def grpo_step(run, batch) -> dict:
    """One GRPO step on ``batch`` (a `PromptBatch`); returns the step's metrics (same on all ranks)."""
    cfg, parts, g = run.cfg, run.grpo, run.cfg.grpo
    leader, vit0 = run.train.replica.is_leader, _vit_calls(run)
    if parts.synced_step != run.step:  # resumed from a checkpoint: the engine holds older weights
        with run.timers("weight_sync"):
            parts.weight_sync(run.model)
    with run.timers("rollout"):
        groups = _generate(run, batch)
        rollout = _rollout(run, batch, groups)
    with run.timers("reward"):
        job = _start_rewards(g.rewards, batch, groups) if leader else None
    cache = _vision_cache(run)
    passes = dict(cache=cache, device=run.dist.device, temperature=cfg.rollout.temperature)
    with run.timers("logprob"):
        old, gap = logprob_pass(run.model, rollout, measure_gap=True, **passes) if g.updates_per_rollout > 1 else (None, None)
        ref = logprob_pass([parts.reference], rollout, **passes)[0] if parts.reference is not None else None
    with run.timers("reward"):
        scores = _share(run, job.result() if leader else None)
        advantages = group_advantages(torch.tensor(scores.total), g.num_generations, g.scale_rewards, g.advantage_eps)
    with run.timers("update"):
        updates = [update_pass(run, rollout, k, advantages=advantages, old=old, ref=ref, cache=cache,
                               measure_gap=old is None and k == 0) for k in range(g.updates_per_rollout)]
    if cache is not None:
        cache.clear()
    with run.timers("weight_sync"):
        parts.engine.wake()
        synced = parts.weight_sync(run.model)
    parts.synced_step = run.step + 1  # the loop counts this step once it returns
    gap = updates[0]["gap"] if gap is None else gap
    return _summarize(run, batch, scores, rollout, groups, updates, gap, synced, _vit_calls(run) - vit0)


def _generate(run, batch) -> list:
    """``[B][G]`` completions: sampled by the replica leader's engine, broadcast to the replica."""
    from megatron_vrft.rollout.base import SamplingParams

    cfg, replica = run.cfg, run.train.replica
    seed = ((cfg.seed * 1_000_003 + run.step) * replica.dp_size + replica.dp_rank) % 2**31
    sampling = SamplingParams.from_config(cfg.rollout, n=cfg.grpo.num_generations, seed=seed)
    groups = run.grpo.engine.generate(batch.items, sampling) if replica.is_leader else None
    run.grpo.engine.sleep()
    return share_completions(groups, replica)


def _rollout(run, batch, groups) -> Rollout:
    cfg = run.cfg
    return build_rollout(batch.prompts, groups, updates=cfg.grpo.updates_per_rollout, pack_tokens=cfg.data.pack_tokens,
                         micro_batch_size=cfg.data.micro_batch_size, pad_id=run.grpo.pad_id,
                         pad_to_multiple_of=cfg.parallel.tp if cfg.parallel.sequence_parallel else 1,
                         device=run.dist.device)


def _start_rewards(specs, batch, groups):
    from megatron_vrft.rewards import start_rewards

    texts = [c.text for group in groups for c in group]
    return start_rewards(specs, texts, reward_columns(batch.items, len(groups[0])))


def _share(run, scores):
    """The leader's `CombinedRewards` on every rank of its replica."""
    from megatron.core import parallel_state as ps

    if dist.get_world_size(ps.get_model_parallel_group()) > 1:
        box = [scores]
        dist.broadcast_object_list(box, src=run.train.replica.leader, group=ps.get_model_parallel_group())
        scores = box[0]
    return scores


def _vision_cache(run):
    """With a frozen ViT, the step's `VisionCache` (stage 0); None = encode per forward (distinct media)."""
    from megatron.core import parallel_state as ps

    from megatron_vrft.models.qwen2_5_vl.vision_reuse import VisionCache
    from megatron_vrft.rollout.sync import _unwrap

    if not (run.cfg.model.freeze_vision and ps.is_pipeline_first_stage()):
        return None
    return VisionCache(_unwrap(run.model[0]), project=run.cfg.model.freeze_projector)


def _vit_calls(run) -> int:
    """ViT forward calls of this rank's policy and reference models so far."""
    from megatron_vrft.rollout.sync import _unwrap

    models = [_unwrap(run.model[0])] + ([run.grpo.reference] if run.grpo.reference is not None else [])
    return sum(m.vision_calls for m in models)


def _summarize(run, batch, scores, rollout: Rollout, groups, updates, gap, synced, vit_calls) -> dict:
    """The step's metrics record: rewards and completion counts summed over DP ranks (collective)."""
    from megatron.core import parallel_state as ps

    from megatron_vrft.trainer.optim import current_lrs

    names = [s.name for s in run.cfg.grpo.rewards]
    total = torch.tensor(scores.total, dtype=torch.float64)
    lens = rollout.completion_lens.double()
    reasons = [c.finish_reason for group in groups for c in group]
    parts = [total.sum(), total.square().sum(), float(total.numel()), lens.sum(), float((lens == 0).sum()),
             float(sum(r == "length" for r in reasons))]
    for name in names:
        vals = [v for v in scores.per_reward[name] if v is not None]
        parts += [sum(vals), len(vals), scores.errors.get(name, 0), len(scores.per_reward[name]) - len(vals)]
    sums = torch.tensor([float(p) for p in parts], dtype=torch.float64)
    if ps.get_data_parallel_world_size() > 1:
        dist.all_reduce(sums, group=ps.get_data_parallel_group())
    s = sums.tolist()
    n = s[2]
    mean = s[0] / n
    metrics = {
        "loss": _mean(updates, "loss"), "grad_norm": _mean(updates, "grad_norm"),
        "reward": mean, "reward_std": math.sqrt(max(s[1] - n * mean * mean, 0.0) / max(n - 1, 1)),
        "kl": _mean(updates, "kl"), "clip_frac": _mean(updates, "clip_frac"), "entropy": _mean(updates, "entropy"),
        "ratio": _mean(updates, "ratio"), "completion_len": s[3] / n, "completions_empty": s[4],
        "completions_truncated": s[5], "logprob_gap": gap, "vit_calls": float(vit_calls),
        "weight_sync_gb": synced["weight_sync_gb"], "samples": batch.num_samples, "completions": n,
        "tokens": batch.num_tokens * run.cfg.grpo.num_generations + s[3], "samples_skipped": batch.samples_skipped,
        "update_skipped": sum(u["update_skipped"] for u in updates),
    }
    for i, name in enumerate(names):
        got, count, errors, none = s[6 + 4 * i: 10 + 4 * i]
        metrics[f"reward/{name}"] = got / count if count else math.nan
        metrics[f"reward_errors/{name}"] = errors
        metrics[f"reward_none/{name}"] = none
    lrs = current_lrs(run.cfg.optimizer, run.optimizer)
    metrics["lr"] = lrs.get("llm", next(iter(lrs.values()), 0.0))
    return metrics


def _mean(updates: list[dict], key: str) -> float:
    return sum(u[key] for u in updates) / len(updates)

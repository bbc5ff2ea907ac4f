"""The model passes of a GRPO step over a `grpo_data.Rollout`, through mcore's schedule.

- `logprob_pass(chunks, rollout, ...)`: forward only (no grad), the per-token logprobs of every
  micro-batch's completion tokens at the sampling temperature (``algos.packed_logprobs``, vocab-parallel,
  no full-vocabulary gather), kept per micro-batch on the last PP stage. Old logprobs (policy) and
  reference logprobs (frozen reference model) are both this pass.
- `update_pass(run, rollout, k, ...)`: forward + backward of mini-batch ``k`` with ``grpo_loss``, then
  the guarded optimizer step (`trainer.step.optimizer_step`).

Loss normalisation across micro-batches and DP ranks: the model config sets
``calculate_per_token_loss``, so each micro-batch returns ``(loss_sum, count)`` and mcore scales
the gradients by ``1 / Σ count`` over all micro-batches of all DP ranks (`trainer.step`). With
``grpo_loss(..., denominator=1)`` giving the sum, ``count`` is the mini-batch's completion tokens
(``token_mean``) or its non-empty completions (``sequence_mean``, ``seq_mean_token_sum``): the
gradient is exactly that of the loss of the whole global mini-batch, whatever the layout.

Media: on PP stage 0 each forward gets its micro-batch's media once per distinct prompt
(`vision_reuse.distinct_media`), or, with ``model.freeze_vision``, the step's `VisionCache`
embeddings (each prompt's ViT output computed once per step, shared by every pass and by the
reference model).

``logprob_gap`` (max |trainer logprob - engine logprob| over completion tokens) is measured in the
first pass that sees the pre-update policy: the old-logprob pass, or the first update's forward when
there is none (``updates_per_rollout == 1``: the old logprobs are then the detached current ones,
ρ = 1 exactly, as in TRL).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Optional

import torch
import torch.distributed as dist

from megatron_vrft.algos import grpo_loss
from megatron_vrft.algos.logprobs import packed_logprobs
from megatron_vrft.trainer.grpo_data import MicroBatch, Rollout
from megatron_vrft.trainer.step import optimizer_step

__all__ = ["logprob_pass", "update_pass", "media_inputs"]

_SUM_KEYS = ("loss", "kl", "clip_frac", "entropy", "ratio")
_MAX_KEYS = ("gap",)


def media_inputs(cache, mb: MicroBatch) -> dict:
    """The micro-batch's media kwargs for ``Qwen25VLModel.forward`` on PP stage 0 (nothing elsewhere)."""
    from megatron.core import parallel_state as ps

    from megatron_vrft.models.qwen2_5_vl.vision_reuse import distinct_media

    if not ps.is_pipeline_first_stage():
        return {}
    return cache.inputs(mb.seqs) if cache is not None else distinct_media(mb.seqs).model_kwargs()


def _forward_step(data_iterator, model, *, cache, device, loss_fn):
    mb: MicroBatch = next(data_iterator)
    p = mb.packed.packed_seq_params()
    p.cu_seqlens_q = p.cu_seqlens_kv = p.cu_seqlens_q.to(device)
    out = model(input_ids=mb.packed.input_ids.to(device), position_ids=mb.packed.position_ids.to(device),
                packed_seq_params=p, **media_inputs(cache, mb))
    return out, partial(loss_fn, mb=mb)


def _schedule(chunks: list, micro: list[MicroBatch], forward_step, *, forward_only: bool) -> list[dict]:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(micro), model=chunks, num_microbatches=len(micro),
        seq_length=max(m.num_tokens for m in micro), micro_batch_size=1, forward_only=forward_only)


def _gap(logp: torch.Tensor, mask: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
    """max |logp - engine logp| over the micro-batch's completion tokens (0 when there are none)."""
    engine = mb.rollout_logp.to(logp.device)
    if engine.shape != logp.shape:
        raise RuntimeError(f"trainer logprobs {tuple(logp.shape)} and engine logprobs {tuple(engine.shape)} "
                           "of a micro-batch do not align")
    diff = (logp.detach().float() - engine).abs() * mask
    return diff.max() if diff.numel() else torch.zeros(())


def _reduce(reports: list[dict]) -> dict[str, float]:
    """Token-weighted means of ``_SUM_KEYS`` (``[Σ value·n, Σ n]`` pairs) and maxima of ``_MAX_KEYS``
    over all micro-batches and DP ranks, on every rank (collective; nan where nothing was measured)."""
    from megatron.core import parallel_state as ps

    sums = torch.zeros(len(_SUM_KEYS), 2, dtype=torch.float64)
    maxes = torch.full((len(_MAX_KEYS),), -math.inf, dtype=torch.float64)
    for r in reports:
        for i, k in enumerate(_SUM_KEYS):
            if k in r:
                sums[i] += r[k].detach().to("cpu", torch.float64)
        for i, k in enumerate(_MAX_KEYS):
            if k in r:
                maxes[i] = max(maxes[i], float(r[k]))
    if ps.is_pipeline_last_stage() and ps.get_data_parallel_world_size() > 1:
        dist.all_reduce(sums, group=ps.get_data_parallel_group())
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        both = torch.cat([sums.reshape(-1), maxes]).to(device)
        dist.broadcast(both, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group())
        both = both.cpu()
        sums, maxes = both[: sums.numel()].reshape(sums.shape), both[sums.numel():]
    out = {k: (float(sums[i, 0] / sums[i, 1]) if sums[i, 1] > 0 else math.nan) for i, k in enumerate(_SUM_KEYS)}
    out.update({k: (float(maxes[i]) if math.isfinite(maxes[i]) else math.nan) for i, k in enumerate(_MAX_KEYS)})
    return out


def _store_logprobs(output, mb: MicroBatch, *, store: dict, temperature: float, measure_gap: bool):
    logp, _, mask = packed_logprobs(output, mb.packed, temperature)
    store[mb.index] = logp.detach()
    report = {"gap": _gap(logp, mask, mb)} if measure_gap else {}
    return output.new_zeros(()), torch.tensor(1, dtype=torch.int), report


def logprob_pass(chunks: list, rollout: Rollout, *, cache, device, temperature: float,
                 measure_gap: bool = False) -> tuple[dict[int, torch.Tensor], float]:
    """Logprobs ``{micro-batch index: [N, C_max]}`` (last PP stage; empty elsewhere) and the
    logprob gap (nan unless ``measure_gap``), for every micro-batch of the rollout."""
    store: dict[int, torch.Tensor] = {}
    fwd = partial(_forward_step, cache=cache, device=device,
                  loss_fn=partial(_store_logprobs, store=store, temperature=temperature, measure_gap=measure_gap))
    with torch.no_grad():
        reports = _schedule(chunks, rollout.micro, fwd, forward_only=True)
    return store, _reduce(reports)["gap"]


def _policy_loss(output, mb: MicroBatch, *, cfg, advantages, old: Optional[dict], ref: Optional[dict],
                 measure_gap: bool):
    g = cfg.grpo
    logp, entropy, mask = packed_logprobs(output, mb.packed, cfg.rollout.temperature, with_entropy=True)
    old_logp = old[mb.index] if old is not None else logp.detach()
    ref_logp = ref[mb.index] if ref is not None else None
    loss, m = grpo_loss(logp, old_logp, ref_logp, advantages[mb.rows].to(logp.device), mask,
                        clip_eps=g.clip_eps_low, clip_eps_high=g.clip_eps_high, beta=g.kl_beta,
                        kl_estimator=g.kl_estimator, loss_agg=g.loss_agg, entropy=entropy, denominator=1.0)
    count = mask.sum() if g.loss_agg == "token_mean" else (mask.sum(dim=1) > 0).sum().float()
    n = m["num_tokens"]
    report = {"loss": torch.stack([loss.detach(), count.detach()])}
    report.update({k: torch.stack([m[k] * n, n]) for k in ("kl", "clip_frac", "entropy", "ratio") if k in m})
    if measure_gap:
        report["gap"] = _gap(logp, mask, mb)
    return loss, count.int(), report


def update_pass(run, rollout: Rollout, k: int, *, advantages: torch.Tensor, old: Optional[dict],
                ref: Optional[dict], cache, measure_gap: bool) -> dict[str, float]:
    """One optimizer step on mini-batch ``k``; returns its loss, kl, clip_frac, entropy, ratio, gap,
    grad_norm and update_skipped (the same on every rank)."""
    for chunk in run.model:
        chunk.zero_grad_buffer()
    run.optimizer.zero_grad()
    loss_fn = partial(_policy_loss, cfg=run.cfg, advantages=advantages, old=old, ref=ref, measure_gap=measure_gap)
    fwd = partial(_forward_step, cache=cache, device=run.dist.device, loss_fn=loss_fn)
    stats = _reduce(_schedule(run.model, rollout.update_batches(k), fwd, forward_only=False))
    updated, grad_norm = optimizer_step(run, stats["loss"])
    return {**stats, "grad_norm": grad_norm, "update_skipped": float(not updated)}

"""The parts of an optimizer step that SFT and GRPO share: the mcore schedule over micro-batches, the
step's global loss, and the guarded optimizer update (NaN/inf -> no update).

Loss normalisation. The model config sets ``calculate_per_token_loss``: a ``loss_func`` returns
``(loss_sum, count, report)``; mcore's schedule then does NOT divide by the number of micro-batches,
and ``finalize_model_grads`` all-reduces ``count`` over data-parallel ranks and scales the gradients
by ``1 / global count`` (DDP sums, not averages, gradients in that mode). So the gradient of a step
is that of ``Σ loss_sum / Σ count`` over the whole global batch, whatever the DP/PP/TP layout and
however the samples are split into micro-batches: the same loss as one process on the same batch.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.distributed as dist

__all__ = ["run_schedule", "step_loss", "optimizer_step"]


def run_schedule(run, forward_step: Callable, micro_batches: list, *, forward_only: bool = False) -> list[dict]:
    """mcore ``get_forward_backward_func`` over ``micro_batches`` (one THD row each); returns the
    loss reports of the last PP stage (empty on other stages)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(micro_batches),
        model=run.model,
        num_microbatches=len(micro_batches),
        seq_length=max(m.num_tokens for m in micro_batches),
        micro_batch_size=1,
        forward_only=forward_only,
    )


def step_loss(reports: Iterable[dict], key: str = "loss") -> float:
    """``Σ loss_sum / Σ count`` over all micro-batches of all DP ranks, on EVERY rank (collective).

    Each report holds ``key``: a float tensor ``[loss_sum, count]``. The last PP stage sums them,
    all-reduces over DP, then broadcasts to the other stages (rank 0 logs it; every rank uses it to
    decide whether to skip the update, so the decision is the same everywhere).
    """
    from megatron.core import parallel_state as ps

    total = torch.zeros(2, dtype=torch.float64)
    for r in reports:
        total += r[key].detach().to("cpu", torch.float64)
    if ps.is_pipeline_last_stage() and ps.get_data_parallel_world_size() > 1:
        dist.all_reduce(total, group=ps.get_data_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        total = total.to(device)
        dist.broadcast(total, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group())
    loss_sum, count = total.tolist()
    return loss_sum / count if count > 0 else float("nan")


def optimizer_step(run, loss: float) -> tuple[bool, float]:
    """Clip and apply the update unless the loss or the gradient norm is NaN/inf; returns
    ``(updated, grad_norm)``. mcore's own ``step()`` would apply a NaN update in fp32/bf16 (it only
    checks for overflow with an fp16 loss scaler), so the norm is computed first and checked here;
    the LR schedule advances only with an update (as in Megatron-LM)."""
    from megatron.core.optimizer import clip_grads

    opt = run.optimizer
    opt.prepare_grads()
    grad_norm = float(opt.get_grad_norm())
    if run.guard.observe(loss, grad_norm):
        return False, grad_norm
    for o in getattr(opt, "chained_optimizers", [opt]):
        params = o.get_parameters()
        if o.config.clip_grad > 0.0 and params and math.isfinite(grad_norm):
            clip_grads.clip_grad_by_total_norm_fp32(params, max_norm=o.config.clip_grad, total_norm=grad_norm)
    updated = bool(opt.step_with_ready_grads())
    if updated:
        run.scheduler.step(increment=1)
    return updated, grad_norm

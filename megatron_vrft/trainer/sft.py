"""The SFT step: next-token cross-entropy on the target tokens of a global batch, one optimizer update.

``sft_step(run, batch)`` runs this rank's micro-batches (THD-packed rows, `trainer.data.StepBatch`)
through mcore's schedule (gradient accumulation over the micro-batches, PP when pp > 1), then the
guarded optimizer update (`trainer.step`). ``sft.loss_agg``:

    token_mean     Σ_tokens loss / number of target tokens of the whole global batch
    sequence_mean  Σ_samples (mean loss over the sample's target tokens) / number of samples

Both are normalised by global counts (see `trainer.step`), so TP/PP/DP layouts give the loss of
one process on the same global batch.
"""

from __future__ import annotations

from functools import partial

import torch

from megatron_vrft.data.packing import PackedBatch
from megatron_vrft.trainer.optim import current_lrs
from megatron_vrft.trainer.step import optimizer_step, run_schedule, step_loss

__all__ = ["sft_step", "sft_loss", "model_inputs"]


def model_inputs(mb: PackedBatch, device: torch.device) -> dict:
    """``Qwen25VLModel.forward`` kwargs for one packed row (pixels only where the batch has them)."""
    def dev(t):
        return None if t is None else t.to(device, non_blocking=True)

    inputs = dict(input_ids=dev(mb.input_ids), position_ids=dev(mb.position_ids),
                  packed_seq_params=_packed_params(mb, device))
    if mb.pixel_values is not None:
        inputs.update(pixel_values=dev(mb.pixel_values), image_grid_thw=mb.image_grid_thw)
    if mb.pixel_values_videos is not None:
        inputs.update(pixel_values_videos=dev(mb.pixel_values_videos), video_grid_thw=mb.video_grid_thw)
    return inputs


def _packed_params(mb: PackedBatch, device: torch.device):
    p = mb.packed_seq_params()
    p.cu_seqlens_q = p.cu_seqlens_kv = p.cu_seqlens_q.to(device)
    return p


def sft_loss(per_token: torch.Tensor, mb: PackedBatch, agg: str):
    """``(loss_sum, count, report)`` for mcore's per-token-loss mode.

    per_token: ``[1, T]`` float32 token losses (0 where labels are ignored); mb.loss_mask ``[1, T]``.
    token_mean: loss_sum = Σ mask·loss, count = Σ mask. sequence_mean: loss_sum = Σ over samples of
    the sample's mean, count = samples with at least one target token.
    """
    mask = mb.loss_mask.to(per_token.device)
    weighted = (per_token.float() * mask)[0]
    if agg == "token_mean":
        loss_sum, count = weighted.sum(), mask.sum()
    else:
        seg = torch.repeat_interleave(torch.arange(len(mb.cu_seqlens) - 1, device=per_token.device),
                                      torch.diff(mb.cu_seqlens.long()).to(per_token.device))
        n_seg = len(mb.cu_seqlens) - 1
        sums = torch.zeros(n_seg, device=per_token.device).index_add(0, seg, weighted)
        counts = torch.zeros(n_seg, device=per_token.device).index_add(0, seg, mask[0])
        has = counts > 0
        loss_sum = (sums[has] / counts[has]).sum()
        count = has.sum().float()
    report = torch.stack([loss_sum.detach().clone(), count.detach().float()])
    return loss_sum, count.int(), {"loss": report}


def _forward_step(data_iterator, model, *, agg: str, device: torch.device):
    mb = next(data_iterator)
    out = model(**model_inputs(mb, device), labels=mb.labels.to(device))
    return out, partial(sft_loss, mb=mb, agg=agg)


def sft_step(run, batch) -> dict:
    """One optimizer step on ``batch`` (a `StepBatch`); returns the step's metrics (same on all ranks)."""
    for chunk in run.model:
        chunk.zero_grad_buffer()
    run.optimizer.zero_grad()
    step = partial(_forward_step, agg=run.cfg.sft.loss_agg, device=run.dist.device)
    with run.timers("forward_backward"):
        reports = run_schedule(run, step, batch.micro_batches)
    loss = step_loss(reports)
    lrs = current_lrs(run.cfg.optimizer, run.optimizer)  # the LRs this update uses (before the schedule moves)
    with run.timers("optimizer"):
        updated, grad_norm = optimizer_step(run, loss)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lrs.get("llm", next(iter(lrs.values()), 0.0)),
               "samples": batch.num_samples, "tokens": batch.num_tokens, "target_tokens": batch.num_loss_tokens,
               "samples_skipped": batch.samples_skipped, "micro_batches": len(batch.micro_batches),
               "update_skipped": int(not updated)}
    metrics.update({f"lr/{m}": lr for m, lr in lrs.items() if m != "llm"})
    return metrics

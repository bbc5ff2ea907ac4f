"""Per-token logprobs (and entropy) of given tokens at temperature T from vocab-parallel logits.

The model's last stage returns each TP rank's vocabulary slice, ``[.., V_pad / TP]`` (ids
``rank * V_local ... (rank + 1) * V_local - 1``, padding rows at ``MASKED_LOGIT``). With x = logits / T:

    lse  = m + log Σ_v exp(x_v - m),  m = max_v x_v       (max and sum all-reduced over TP)
    logp = x_target - lse                                  (x_target all-reduced: one rank holds it)
    H    = lse - Σ_v p_v x_v                               (Σ p x all-reduced), p = exp(x - lse)

No rank ever holds the full vocabulary, and the logits are upcast to fp32 one chunk of tokens at a
time (``chunk_elements``), so the extra memory is one fp32 chunk, not a copy of the logits. The
backward pass (a custom autograd Function) recomputes p per chunk from the saved lse and needs no
communication: d logp / d x_v = 1[v = target] - p_v and d H / d x_v = -p_v (x_v - Σ p x).

`packed_logprobs` applies it to a packed THD batch (``data/packing.PackedBatch``): only completion
tokens are computed, and the result comes back as ``[N, C_max]`` rows (one per packed sequence) with
a mask, the layout ``grpo_loss`` takes. Context parallelism is not handled (CP = 1).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["token_logprobs", "packed_logprobs", "vocab_parallel_logprobs"]

# fp32 elements upcast at once (256 MiB); bounds the extra memory of a pass.
DEFAULT_CHUNK_ELEMENTS = 1 << 26


def _tp_group(group):
    """The TP group to reduce over: the given one, else mcore's when initialised, else None (world of 1)."""
    if group is not None:
        return group
    from megatron.core import parallel_state as ps

    if dist.is_available() and dist.is_initialized() and ps.model_parallel_is_initialized():
        return ps.get_tensor_model_parallel_group()
    return None


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


class _VocabParallelLogprobs(torch.autograd.Function):
    """rows [K] of logits2d [M, V_local] -> logp [K] (and entropy [K]) at temperature T."""

    @staticmethod
    def forward(ctx, logits2d, rows, targets, temperature, with_entropy, group, chunk_elements):
        compute = torch.promote_types(logits2d.dtype, torch.float32)
        v_local = logits2d.shape[1]
        rank = dist.get_rank(group) if group is not None else 0
        start = rank * v_local
        k = rows.numel()
        chunk = max(1, chunk_elements // max(v_local, 1))
        lse = torch.empty(k, dtype=compute, device=logits2d.device)
        logp = torch.empty(k, dtype=compute, device=logits2d.device)
        mean_x = torch.empty(k, dtype=compute, device=logits2d.device) if with_entropy else None
        for lo in range(0, k, chunk):
            hi = min(k, lo + chunk)
            x = logits2d[rows[lo:hi]].to(compute) / temperature  # [c, V_local], the only fp32 copy
            m = x.max(dim=1).values
            _all_reduce(m, dist.ReduceOp.MAX, group)
            e = torch.exp(x - m[:, None])
            local_t = targets[lo:hi] - start
            here = (local_t >= 0) & (local_t < v_local)
            x_t = x.gather(1, local_t.clamp(0, v_local - 1)[:, None]).squeeze(1) * here
            parts = [e.sum(dim=1), x_t] + ([(e * x).sum(dim=1)] if with_entropy else [])
            sums = _all_reduce(torch.stack(parts), dist.ReduceOp.SUM, group)  # one reduce per chunk
            lse[lo:hi] = m + sums[0].log()
            logp[lo:hi] = sums[1] - lse[lo:hi]
            if with_entropy:
                mean_x[lo:hi] = sums[2] / sums[0]
            del x, e
        ctx.save_for_backward(logits2d, rows, targets, lse, *([mean_x] if with_entropy else []))
        ctx.meta = (temperature, with_entropy, start, chunk)
        if with_entropy:
            return logp, lse - mean_x
        return logp, None

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        logits2d, rows, targets, lse, *rest = ctx.saved_tensors
        temperature, with_entropy, start, chunk = ctx.meta
        mean_x = rest[0] if with_entropy else None
        compute = lse.dtype
        v_local = logits2d.shape[1]
        grad = torch.zeros_like(logits2d)
        if grad_logp is None:
            grad_logp = torch.zeros_like(lse)
        for lo in range(0, rows.numel(), chunk):
            hi = min(rows.numel(), lo + chunk)
            x = logits2d[rows[lo:hi]].to(compute) / temperature
            p = torch.exp(x - lse[lo:hi, None])
            gl = grad_logp[lo:hi].to(compute)
            g = -p * gl[:, None]
            local_t = targets[lo:hi] - start
            here = (local_t >= 0) & (local_t < v_local)
            g.scatter_add_(1, local_t.clamp(0, v_local - 1)[:, None], (gl * here)[:, None])
            if with_entropy and grad_entropy is not None:
                g -= grad_entropy[lo:hi, None].to(compute) * p * (x - mean_x[lo:hi, None])
            grad.index_add_(0, rows[lo:hi], (g / temperature).to(grad.dtype))
            del x, p, g
        return grad, None, None, None, None, None, None


def vocab_parallel_logprobs(
    logits2d: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    group=None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Logprob of ``targets[k]`` at row ``rows[k]`` of ``logits2d`` (module docstring), differentiable.

    Args:
        logits2d: ``[M, V_local]`` this TP rank's vocabulary slice of M positions' logits (any float dtype).
        rows: ``[K]`` int64 positions to score; targets: ``[K]`` int64 global token ids (< V_pad).
        temperature: the sampling temperature (> 0) the tokens were drawn at.
        group: TP process group; None = mcore's TP group when initialised, else no reduction.
    Returns:
        ``logp [K]`` and ``entropy [K]`` (or None), in fp32 (fp64 for fp64 logits).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits2d.dim() != 2 or rows.shape != targets.shape or rows.dim() != 1:
        raise ValueError(
            f"expected logits [M, V], rows [K], targets [K]; got {tuple(logits2d.shape)}, "
            f"{tuple(rows.shape)}, {tuple(targets.shape)}"
        )
    return _VocabParallelLogprobs.apply(
        logits2d, rows.long(), targets.long(), float(temperature), with_entropy, _tp_group(group), chunk_elements
    )


def token_logprobs(
    logits_local: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    group=None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-position logprob of ``targets`` under ``softmax(logits / T)`` over the TP-sharded vocabulary.

    Args:
        logits_local: ``[..., T, V_pad / TP]`` this rank's vocabulary slice.
        targets: ``[..., T]`` int64 global token ids.
    Returns:
        ``logp [..., T]`` and ``entropy [..., T]`` (or None), fp32.
    """
    if logits_local.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits_local.shape)} and targets {tuple(targets.shape)} do not align")
    flat = logits_local.reshape(-1, logits_local.shape[-1])
    rows = torch.arange(flat.shape[0], device=flat.device)
    logp, ent = vocab_parallel_logprobs(flat, rows, targets.reshape(-1), temperature, with_entropy=with_entropy,
                                        group=group, chunk_elements=chunk_elements)
    return logp.reshape(targets.shape), ent.reshape(targets.shape) if ent is not None else None


def packed_logprobs(
    logits_local: torch.Tensor,
    batch,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    group=None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Logprobs of the completion tokens of each sequence of a packed THD batch.

    Args:
        logits_local: ``[1, T, V_pad / TP]`` the model's last-stage output for ``batch``.
        batch: ``PackedBatch``; its ``labels`` / ``loss_mask`` say which positions predict a
            completion token (position i predicts token i + 1 of the same sequence).
    Returns:
        ``logp [N, C_max]``, ``entropy [N, C_max]`` or None, ``mask [N, C_max]`` float32 (1 = a
        completion token), N = the packed sequences in batch order, completion tokens left-aligned
        in generation order; padding entries are 0.
    """
    if logits_local.dim() != 3 or logits_local.shape[:2] != batch.input_ids.shape:
        raise ValueError(f"logits {tuple(logits_local.shape)} do not match the packed row {tuple(batch.input_ids.shape)}")
    positions = batch.loss_mask[0].nonzero().squeeze(1).to(logits_local.device)  # [K], ascending
    cu = batch.cu_seqlens.to(positions.device).long()
    seq = torch.searchsorted(cu[1:], positions, right=True)  # sequence index of each position
    n = len(batch.sample_ids)
    counts = torch.bincount(seq, minlength=n)[:n]
    col = torch.arange(positions.numel(), device=positions.device) - (torch.cumsum(counts, 0) - counts)[seq]
    logp, ent = vocab_parallel_logprobs(
        logits_local[0], positions, batch.labels[0, positions.cpu()].to(positions.device), temperature,
        with_entropy=with_entropy, group=group, chunk_elements=chunk_elements,
    )
    width = int(counts.max()) if n else 0
    mask = torch.zeros(n, width, dtype=torch.float32, device=positions.device)
    mask[seq, col] = 1.0

    def scatter(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, width, dtype=values.dtype, device=values.device).index_put((seq, col), values)

    return scatter(logp), scatter(ent) if ent is not None else None, mask

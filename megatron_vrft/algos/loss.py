"""GRPO policy loss: clipped importance-ratio objective + beta * KL to a frozen reference.

Per completion token t of completion i (ρ = exp(logp - old_logp), A = advantages[i]):

    pg[i, t] = max(-ρ A, -clip(ρ, 1 - ε_low, 1 + ε_high) A)          (PPO clip; DAPO clip-higher
                                                                   when ε_high > ε_low)
    kl[i, t] = k(logp, ref_logp)                                    (Schulman's estimators of
                                                                   KL(π || π_ref), samples from π)
    loss_tok = pg + β kl

k1 = logp - ref,  k2 = (logp - ref)^2 / 2,  k3 = exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased).

Aggregation over the masked tokens (``mask`` 1 = a completion token):
- ``token_mean``: Σ_{i,t} loss_tok / Σ_{i,t} mask (DAPO; every token weighs the same);
- ``sequence_mean``: mean_i (Σ_t loss_tok / Σ_t mask) (original GRPO; every completion weighs the same);
- ``seq_mean_token_sum``: mean_i Σ_t loss_tok (Dr.GRPO; no length normalisation).
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["grpo_loss", "kl_penalty", "KL_ESTIMATORS", "LOSS_AGGREGATIONS"]

KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "seq_mean_token_sum")

# exp() of a log ratio above ~88 overflows fp32. A token whose probability moved by e^20 since the
# rollout carries no usable signal; clamping keeps the loss finite (its gradient there is 0).
_MAX_LOG_RATIO = 20.0


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL(π || π_ref) estimate, ``[N, T]`` -> ``[N, T]`` (see the module docstring)."""
    diff = logp - ref_logp  # log π/π_ref at the sampled token
    if estimator == "k1":
        return diff
    if estimator == "k2":
        return 0.5 * diff.square()
    if estimator == "k3":
        neg = (-diff).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.exp(neg) - neg - 1.0
    raise ValueError(f"unknown kl_estimator {estimator!r}; use one of {list(KL_ESTIMATORS)}")


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_agg: str, denominator: Optional[float]) -> torch.Tensor:
    """Masked ``[N, T]`` -> scalar by ``loss_agg``; ``denominator`` replaces the token / sequence count."""
    # where, not a product: a padding entry never reaches the sum, whatever (finite) value it holds.
    masked = torch.where(mask > 0, per_token, torch.zeros_like(per_token))
    if loss_agg == "token_mean":
        count = mask.sum().clamp(min=1.0) if denominator is None else max(float(denominator), 1.0)
        return masked.sum() / count
    tokens = mask.sum(dim=1)  # [N]
    if loss_agg == "sequence_mean":
        seq = masked.sum(dim=1) / tokens.clamp(min=1.0)
    elif loss_agg == "seq_mean_token_sum":
        seq = masked.sum(dim=1)
    else:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; use one of {list(LOSS_AGGREGATIONS)}")
    # A row without completion tokens (all padding) is not a sequence: it is left out of the mean.
    count = (tokens > 0).sum().clamp(min=1) if denominator is None else max(float(denominator), 1.0)
    return seq.sum() / count


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: Optional[float] = None,
    beta: float = 0.04,
    kl_estimator: str = "k3",
    loss_agg: str = "token_mean",
    entropy: Optional[torch.Tensor] = None,
    *,
    denominator: Optional[float] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of a batch of completions (module docstring) and its metrics.

    Args:
        logp: ``[N, T]`` current policy logprobs of the completion tokens (differentiable).
        old_logp: ``[N, T]`` logprobs of the policy that sampled them (no grad; equal to ``logp``'s
            values on the first update of a rollout, so ρ = 1 there).
        ref_logp: ``[N, T]`` frozen reference logprobs, or None when ``beta == 0``.
        advantages: ``[N]`` one advantage per completion (``group_advantages``).
        mask: ``[N, T]`` 1 for completion tokens, 0 for padding (bool or float).
        clip_eps: ε_low; the ratio is clipped below at 1 - ε_low.
        clip_eps_high: ε_high (clip-higher); None = ``clip_eps``.
        beta: KL weight; 0 skips the KL term (``ref_logp`` may be None).
        kl_estimator: ``k1``, ``k2`` or ``k3``.
        loss_agg: ``token_mean``, ``sequence_mean`` or ``seq_mean_token_sum``.
        entropy: optional ``[N, T]`` per-token entropy of the policy, only reported.
        denominator: divide the summed loss by this count instead of this batch's own (tokens for
            ``token_mean``, non-empty sequences otherwise): a trainer passes the whole mini-batch's
            count over micro-batches and data-parallel ranks so that their gradients add up to the
            mini-batch mean.
    Returns:
        loss: scalar; metrics: detached float32 scalars, token means over ``mask`` of this batch:
        ``clip_frac`` (ρ clipped at either bound, i.e. the token's gradient is cut), ``clip_frac_low``,
        ``clip_frac_high``, ``ratio`` (mean ρ), ``kl`` (when ``ref_logp`` is given), ``entropy``
        (when given), and ``num_tokens``.
    """
    if logp.dim() != 2:
        raise ValueError(f"logp must be [N, T], got shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp), ("mask", mask), ("entropy", entropy)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, logp has {tuple(logp.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logp.shape[0]}], got shape {tuple(advantages.shape)}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}; use one of {list(KL_ESTIMATORS)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference model's logprobs)")
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(1)  # [N, 1]

    log_ratio = (logp - old_logp.detach()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(-ratio * adv, -clipped * adv)
    kl = kl_penalty(logp, ref_logp.detach(), kl_estimator) if ref_logp is not None else None
    if beta > 0:
        per_token = per_token + beta * kl
    loss = _aggregate(per_token, mask, loss_agg, denominator)

    with torch.no_grad():
        n_tok = mask.sum()

        def mean(x: torch.Tensor) -> torch.Tensor:
            return ((x.to(mask.dtype) * mask).sum() / n_tok.clamp(min=1.0)).float()

        # The clipped branch is the max (its gradient is cut) exactly in these two regions.
        low = (ratio < 1.0 - eps_low) & (adv < 0)
        high = (ratio > 1.0 + eps_high) & (adv > 0)
        metrics = {
            "clip_frac": mean(low | high),
            "clip_frac_low": mean(low),
            "clip_frac_high": mean(high),
            "ratio": mean(ratio),
            "num_tokens": n_tok.float(),
        }
        if kl is not None:
            metrics["kl"] = mean(kl)
        if entropy is not None:
            metrics["entropy"] = mean(entropy)
    return loss, metrics

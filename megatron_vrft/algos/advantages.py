"""GRPO group-relative advantages (one scalar per completion, shared by all its tokens)."""

from __future__ import annotations

import torch

__all__ = ["group_advantages"]


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Advantage of each completion relative to the other completions of its prompt.

    Args:
        rewards: ``[B*G]`` float, the weighted total reward of each completion; the G completions
            of a prompt are consecutive (prompt 0's completions first).
        group_size: G (>= 2: one completion has no group to compare with).
        scale_by_std: divide by the group's standard deviation (GRPO); False keeps only the mean
            subtraction (Dr.GRPO).
        eps: added to the std, so a group of equal rewards gets advantage exactly 0 (never NaN).
    Returns:
        ``[B*G]`` float32: ``(r - mean_group) / (std_group + eps)`` or ``r - mean_group``. The std is
        the unbiased (Bessel-corrected) sample std, as TRL and verl compute it.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards must be finite (a reward that does not apply counts 0 in the total)")
    grouped = rewards.float().reshape(-1, group_size)  # [B, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    return centered.reshape(-1)

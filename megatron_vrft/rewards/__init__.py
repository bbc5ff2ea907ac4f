"""Reward library: one registry, the seeds' rewards, and an async LLM-judge client.

    from megatron_vrft.rewards import get_reward, register_reward, combine_rewards
    get_reward("accuracy")(completions, solution=[...])        -> [1.0, 0.0, ...]
    get_reward("tar", base_url=..., model=...)(completions, temporal_grounding=[...])

Built-in names: accuracy, format, format_v2 (labels.py); iou_v2, refuse_iou (temporal.py);
explain_correction (refusal.py); mc_accuracy (choice.py); tar (tar.py, judge.py). Plugins are named
``"pkg.module:function"``. Heavy dependencies (sentence-transformers, openai) load on first use.
See docs/rewards.md for each reward's definition and an example.
"""

from . import choice, labels, refusal, tar, temporal  # noqa: F401  (import registers the built-ins)
from .registry import (
    CombinedRewards,
    DuplicateRewardError,
    RewardConfigError,
    RewardError,
    RewardInputError,
    RewardOutputError,
    RewardSpec,
    UnknownRewardError,
    combine_rewards,
    get_reward,
    register_reward,
    registered_rewards,
)

__all__ = [
    "CombinedRewards",
    "DuplicateRewardError",
    "RewardConfigError",
    "RewardError",
    "RewardInputError",
    "RewardOutputError",
    "RewardSpec",
    "UnknownRewardError",
    "combine_rewards",
    "get_reward",
    "register_reward",
    "registered_rewards",
]

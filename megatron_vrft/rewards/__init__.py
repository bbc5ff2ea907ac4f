"""Reward library: one registry, the seeds' rewards, and an async LLM-judge client.

    from megatron_vrft.rewards import get_reward, register_reward, combine_rewards
    get_reward("accuracy")(completions, solution=[...])        -> [1.0, 0.0, ...]
    get_reward("tar", base_url=..., model=...)(completions, temporal_grounding=[...])
    job = start_rewards(specs, completions, columns); ...; job.result()   -> CombinedRewards

Built-in names: accuracy, format, format_v2, think_answer_format (labels.py); iou_v2, refuse_iou (temporal.py);
explain_correction (refusal.py); mc_accuracy (choice.py); tar (tar.py, judge.py). Plugins are named
``"pkg.module:function"``. Heavy dependencies (sentence-transformers, openai) load on first use.
See docs/rewards.md for each reward's definition and an example.
"""

from . import choice, labels, refusal, tar, temporal  # noqa: F401  (import registers the built-ins)
from .combine import CombinedRewards, RewardJob, combine_rewards, start_rewards
from .registry import (
    DuplicateRewardError,
    RewardConfigError,
    RewardError,
    RewardInputError,
    RewardOutputError,
    RewardSpec,
    UnknownRewardError,
    check_specs,
    get_reward,
    register_reward,
    registered_rewards,
    spec_problems,
)

__all__ = [
    "CombinedRewards",
    "DuplicateRewardError",
    "RewardConfigError",
    "RewardError",
    "RewardInputError",
    "RewardOutputError",
    "RewardJob",
    "RewardSpec",
    "UnknownRewardError",
    "check_specs",
    "combine_rewards",
    "spec_problems",
    "start_rewards",
    "get_reward",
    "register_reward",
    "registered_rewards",
]

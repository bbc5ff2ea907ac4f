"""Pure GRPO math: group advantages, the clipped policy loss with KL estimators, and per-token
logprobs/entropy from (vocab-parallel) logits."""

from .advantages import group_advantages
from .logprobs import token_logprobs
from .loss import KL_ESTIMATORS, LOSS_AGGREGATIONS, grpo_loss, kl_penalty

__all__ = ["group_advantages", "grpo_loss", "kl_penalty", "token_logprobs", "KL_ESTIMATORS", "LOSS_AGGREGATIONS"]

"""Runtime: distributed init (nccl on GPU, gloo on CPU), mcore parallel state, seeding, and the
CPU compatibility layer for Megatron-Core."""

from megatron_vrft.runtime.distributed import (
    DistInfo,
    destroy_distributed,
    device,
    free_port,
    init_distributed,
)
from megatron_vrft.runtime.seed import seed_everything

__all__ = ["DistInfo", "init_distributed", "destroy_distributed", "device", "free_port", "seed_everything"]

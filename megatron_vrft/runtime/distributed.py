"""Process-group and Megatron-Core parallel-state set-up, from the torchrun environment.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a plain ``python``
run is a world of one. The backend is nccl on CUDA, else gloo on CPU (with the mcore CPU
compatibility layer applied before anything from mcore is built). This is the only place that
creates process groups: model code reads them from ``megatron.core.parallel_state``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from megatron_vrft.runtime import cpu_compat
from megatron_vrft.runtime.seed import seed_everything

__all__ = ["DistInfo", "init_distributed", "destroy_distributed", "device", "free_port"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    tp: int
    pp: int
    cp: int
    dp: int


def device() -> torch.device:
    """The device this process computes on."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(
    tp: int = 1,
    pp: int = 1,
    cp: int = 1,
    *,
    seed: int = 1234,
    timeout_minutes: int = 30,
    virtual_pp: int | None = None,
) -> DistInfo:
    """Initialises torch.distributed and mcore ``parallel_state`` for TP x PP x CP (x DP).

    DP is what is left: ``world_size / (tp * pp * cp)``; a world size not divisible by that product
    is an error. Seeds every RNG (``seed_everything``) including mcore's TP RNG tracker.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size % (tp * pp * cp) != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by tp*pp*cp = {tp}*{pp}*{cp} = {tp * pp * cp}"
        )
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = "nccl"
    else:
        cpu_compat.apply()
        backend = "gloo"
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            if world_size != 1:
                raise RuntimeError("WORLD_SIZE > 1 but MASTER_ADDR is unset: launch with torchrun")
            os.environ["MASTER_ADDR"] = "127.0.0.1"
            os.environ["MASTER_PORT"] = str(free_port())
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=timeout_minutes),
        )
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            context_parallel_size=cp,
            virtual_pipeline_model_parallel_size=virtual_pp,
            distributed_timeout_minutes=timeout_minutes,
        )
    seed_everything(seed)
    model_parallel_cuda_manual_seed(seed)
    return DistInfo(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        backend=backend,
        device=device(),
        tp=tp,
        pp=pp,
        cp=cp,
        dp=world_size // (tp * pp * cp),
    )


def destroy_distributed() -> None:
    """Tears down mcore parallel state and the default process group (idempotent)."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()

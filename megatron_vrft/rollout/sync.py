"""Weight sync: the live TP x PP-sharded mcore model -> a rollout engine, as canonical HF tensors.

The one weight map does the work: ``live.export_hf_state`` (collective on every rank of the model
parallel group) gathers each parameter family over TP on its owning PP stage, converts it to HF
tensors and broadcasts them over PP, so every rank holds the full HF tensors in turn. They are
grouped into buckets of about ``bucket_mb`` MiB and each bucket goes to this rank's engine with
``engine.update_weights`` (vLLM at TP=1: one engine per rank; vLLM TP > 1 shards the full tensors
itself; the HF engine copies them). A bucket bounds the extra memory a sync needs to one bucket
(plus one transformer block): buckets end only between blocks (`block_key`), because vLLM fuses
q/k/v and gate/up into one layer and reloads layer by layer, so a layer whose tensors arrive in two
calls would be rebuilt from the half it got.

Frozen parameters (``requires_grad=False`` in the mcore model, e.g. ``model.freeze_vision``) do not
change during training: `WeightSync` sends them on its first call only. They are still gathered by
``export_hf_state`` (it exports the whole model), only not sent.

    sync = WeightSync(hf_config, engine, bucket_mb=cfg.rollout.weight_sync_bucket_mb)
    metrics = sync(model_chunks)   # {"time/weight_sync": s, "weight_sync_gb": GB, ...}
"""

from __future__ import annotations

import time
from typing import Any

import torch

__all__ = ["WeightSync", "sync_weights", "frozen_hf_names", "block_key"]


def block_key(name: str) -> str:
    """The unit a weight update must not split: ``model.layers.3`` / ``visual.blocks.0`` for block
    tensors, else the top-level module (``visual.merger``, ``model.embed_tokens``, ``lm_head.weight``)."""
    parts = name.split(".")
    if name.startswith(("model.layers.", "visual.blocks.")):
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside mcore's DDP / Float16Module wrappers (each keeps it as ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _single_chunk(model_chunks) -> torch.nn.Module:
    chunks = list(model_chunks) if isinstance(model_chunks, (list, tuple)) else [model_chunks]
    if len(chunks) != 1:
        raise ValueError(f"weight sync supports one model chunk per rank (no virtual pipeline), got {len(chunks)}")
    return _unwrap(chunks[0])


def frozen_hf_names(model: torch.nn.Module, hf_config: Any, *, first_stage_layers: int | None = None) -> set[str]:
    """Canonical HF names whose mcore parameter is frozen on its owning stage (collective over PP)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_vrft.models.qwen2_5_vl.live import parallel_ranks
    from megatron_vrft.models.qwen2_5_vl.weights import instances, model_dims

    _, _, pp_rank, pp_size = parallel_ranks()
    local = {n for n, p in model.named_parameters() if not p.requires_grad}
    per_stage: list[Any] = [None] * pp_size
    dist.all_gather_object(per_stage, local, group=ps.get_pipeline_model_parallel_group())
    names: set[str] = set()
    for inst in instances(model_dims(hf_config), pp_size, first_stage_layers):
        if inst.export and inst.mcore in per_stage[inst.pp_rank]:
            names.update(inst.hf)
    return names


def sync_weights(model_chunks, hf_config: Any, engine, *, bucket_mb: float, first_stage_layers: int | None = None,
                 skip: frozenset[str] | set[str] = frozenset()) -> dict[str, float]:
    """Streams the model's HF tensors (minus the names in ``skip``) to ``engine`` in buckets.

    Collective: every rank of the model-parallel group must call it. Returns ``time/weight_sync``
    (seconds, gather + conversion + engine loads), ``weight_sync_gb`` (bytes sent to this rank's
    engine / 1e9), ``weight_sync_tensors`` and ``weight_sync_buckets``.
    """
    from megatron_vrft.models.qwen2_5_vl.live import export_hf_state

    if bucket_mb <= 0:
        raise ValueError(f"rollout.weight_sync_bucket_mb must be > 0, got {bucket_mb}")
    model = _single_chunk(model_chunks)
    limit = bucket_mb * 2**20
    t0 = time.perf_counter()
    bucket: list[tuple[str, torch.Tensor]] = []
    size = sent = tensors = buckets = 0
    with torch.no_grad():
        for name, tensor in export_hf_state(model, hf_config, first_stage_layers=first_stage_layers):
            if name in skip:
                continue
            if size >= limit and block_key(name) != block_key(bucket[-1][0]):
                engine.update_weights(bucket)
                sent, tensors, buckets = sent + size, tensors + len(bucket), buckets + 1
                bucket, size = [], 0
            bucket.append((name, tensor))
            size += tensor.numel() * tensor.element_size()
        if bucket:
            engine.update_weights(bucket)
            sent, tensors, buckets = sent + size, tensors + len(bucket), buckets + 1
    return {"time/weight_sync": time.perf_counter() - t0, "weight_sync_gb": sent / 1e9,
            "weight_sync_tensors": float(tensors), "weight_sync_buckets": float(buckets)}


class WeightSync:
    """`sync_weights` with the frozen parameters sent on the first call only (see the module docstring)."""

    def __init__(self, hf_config: Any, engine, *, bucket_mb: float, first_stage_layers: int | None = None):
        self.hf_config, self.engine = hf_config, engine
        self.bucket_mb, self.first_stage_layers = bucket_mb, first_stage_layers
        self.frozen: set[str] | None = None  # known after the first call

    def __call__(self, model_chunks) -> dict[str, float]:
        model = _single_chunk(model_chunks)
        skip: set[str] = set()
        if self.frozen is None:
            self.frozen = frozen_hf_names(model, self.hf_config, first_stage_layers=self.first_stage_layers)
        else:
            skip = self.frozen
        return sync_weights(model, self.hf_config, self.engine, bucket_mb=self.bucket_mb,
                            first_stage_layers=self.first_stage_layers, skip=skip)

"""The weight map (``weights.PARAMS``) applied to a live ``Qwen25VLModel`` under the current mcore state.

- ``load_into_model``: this rank's shard of HF weights into the model (parity tests, HF init);
- ``export_hf_state``: canonical HF tensors gathered from a TP x PP model on every rank (the rollout
  weight sync and HF export);
- ``model_state`` / ``parallel_ranks`` / ``copy_strict``: the pieces the mcore checkpoint I/O shares.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import torch

from megatron_vrft.models.qwen2_5_vl.weights import (
    MissingWeightError,
    WeightShapeError,
    check_parallel_sizes,
    hf_shape,
    hf_to_mcore,
    instances,
    merge_param,
    model_dims,
    read_hf_key,
)

__all__ = ["model_state", "parallel_ranks", "copy_strict", "load_into_model", "export_hf_state"]


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's parameters/buffers by local mcore name (TE ``_extra_state`` entries dropped)."""
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.endswith("_extra_state")}


def parallel_ranks() -> tuple[int, int, int, int]:
    """``(tp_rank, tp_size, pp_rank, pp_size)`` from the current mcore parallel state."""
    from megatron.core import parallel_state as ps

    return (ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size(),
            ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size())


def load_into_model(
    model: torch.nn.Module,
    hf_state_or_getter: Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor],
    hf_config: Any,
    *,
    first_stage_layers: int | None = None,
) -> None:
    """Copies this rank's shard of HF weights into a built ``Qwen25VLModel`` (current mcore state).

    Accepts an HF state dict in either key layout, or a getter of canonical names. Strict: keys the
    model has but the map does not produce (and vice versa), or shape mismatches, raise.
    """
    if isinstance(hf_state_or_getter, Mapping):
        state = {read_hf_key(k): v for k, v in hf_state_or_getter.items()}

        def get(name: str) -> torch.Tensor:
            if name not in state:
                raise MissingWeightError(f"HF state has no tensor {name}")
            return state[name]
    else:
        get = hf_state_or_getter
    tp_rank, tp_size, pp_rank, pp_size = parallel_ranks()
    target = model_state(model)
    produced = hf_to_mcore(get, hf_config, tp_rank=tp_rank, tp_size=tp_size, pp_rank=pp_rank,
                           pp_size=pp_size, first_stage_layers=first_stage_layers)
    copy_strict(target, produced, where=f"(tp_rank={tp_rank}, pp_rank={pp_rank})")


def copy_strict(target: dict[str, torch.Tensor], produced: Iterator[tuple[str, torch.Tensor]], where: str) -> None:
    """Copies every ``(name, tensor)`` of ``produced`` into ``target`` (a ``model_state``); unknown
    names, shape mismatches and target entries left without a value raise, naming them."""
    seen = set()
    with torch.no_grad():
        for name, t in produced:
            if name not in target:
                raise MissingWeightError(f"model {where} has no parameter {name} (layer split or spec mismatch?)")
            if tuple(target[name].shape) != tuple(t.shape):
                raise WeightShapeError(
                    f"model parameter {name} {where} has shape {list(target[name].shape)}, weights give {list(t.shape)}"
                )
            target[name].copy_(t)
            seen.add(name)
    missing = sorted(set(target) - seen)
    if missing:
        raise MissingWeightError(f"weights give no value for model parameters {where}: {missing[:8]}")


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def export_hf_state(
    model: torch.nn.Module, hf_config: Any, *, first_stage_layers: int | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields ``(canonical HF name, full tensor)`` on EVERY rank of a TP x PP model (collective).

    Each family is all-gathered over TP on its owning stage, converted with the map, then
    broadcast over the PP group; all ranks must iterate the generator to the end together. The
    rank-local steps of a family run under ``collective.agree`` over the model-parallel group: an
    error on one rank raises ``CollectiveError`` on all of them instead of leaving them in the
    family's collectives. At TP=1 the rank holds every family whole: no gather (a profile put ~65 %
    of a TP=1 export in gloo all-gathers on the one-rank group), one copy where the map gives the
    parameter itself, so the yielded tensors never share memory with the model either way.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_vrft.runtime.collective import agree

    tp_rank, tp_size, pp_rank, pp_size = parallel_ranks()
    d = model_dims(hf_config)
    check_parallel_sizes(d, tp_size, pp_size, first_stage_layers)
    local = model_state(model)
    tp_group, pp_group = ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group()
    dtypes: list[Any] = [None] * pp_size  # stage -> {name: dtype}: receivers must allocate the right dtype
    if pp_size > 1:
        dist.all_gather_object(dtypes, {n: t.dtype for n, t in local.items()}, group=pp_group)
    mp_group = ps.get_model_parallel_group()
    for inst in instances(d, pp_size, first_stage_layers):
        if not inst.export:
            continue
        owner = inst.pp_rank == pp_rank
        with agree(f"export_hf_state: {inst.mcore} (tp_rank={tp_rank}, pp_rank={pp_rank})", group=mp_group):
            if owner:
                if inst.mcore not in local:
                    raise MissingWeightError(f"model (tp_rank={tp_rank}, pp_rank={pp_rank}) has no parameter {inst.mcore}")
                mine = local[inst.mcore].detach().contiguous()
                shards = [mine] if tp_size == 1 else [torch.empty_like(mine) for _ in range(tp_size)]
            else:
                dtype = dtypes[inst.pp_rank][inst.mcore]
                full = [torch.empty(hf_shape(inst.param, j, d), dtype=dtype, device=next(iter(local.values())).device)
                        for j in range(len(inst.hf))]
        if owner and tp_size > 1:
            dist.all_gather(shards, mine, group=tp_group)
        with agree(f"export_hf_state: {inst.mcore} -> HF (tp_rank={tp_rank}, pp_rank={pp_rank})", group=mp_group):
            if owner:
                full = [t.contiguous() for t in merge_param(inst.param, shards, d)]
                if tp_size == 1:  # the map may hand back the parameter itself (or a view of it)
                    full = [t.clone() if _shares_memory(t, mine) else t for t in full]
        if pp_size > 1:
            src = dist.get_global_rank(pp_group, inst.pp_rank)
            for t in full:
                dist.broadcast(t, src=src, group=pp_group)
        yield from zip(inst.hf, full)

"""The Megatron-Core model-weights checkpoint: layout, reader, resharding loader, writers.

Layout (format ``megatron_vrft/mcore-weights`` version 1; see docs/checkpoints.md)::

    OUT/metadata.json                     format, version, tp, pp, first_stage_layers, layer_split,
                                          padded_vocab_size, dtype, hf_config, per-rank tensor counts
    OUT/mp_rank_{tp:02d}_{pp:03d}/model.safetensors   that rank's LOCAL mcore names and shards
    OUT/COMPLETE                          written last; a directory without it is never loaded

Every rank file is exactly the ``state_dict`` of that rank's model (the weight map's names and
shapes), so loading at the saved TP/PP is a straight copy. At another TP/PP (or layer split) the
loader reads the saved shards as HF tensors one family at a time (``weights.McoreAsHF``) and
re-splits them with the map, so any saved layout loads at any layout with memory bounded by one
parameter family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from megatron_vrft.checkpoint.atomic import CheckpointError, atomic_dir, is_complete
from megatron_vrft.checkpoint.stream import SafetensorsFile, SafetensorsWriter, TensorSpec
from megatron_vrft.models.qwen2_5_vl import live
from megatron_vrft.models.qwen2_5_vl import weights as W
from megatron_vrft.runtime.collective import agree

__all__ = [
    "FORMAT",
    "VERSION",
    "rank_dir",
    "McoreCheckpoint",
    "build_metadata",
    "rank_file",
    "load_mcore_checkpoint",
    "save_mcore_checkpoint",
]

FORMAT = "megatron_vrft/mcore-weights"
VERSION = 1
METADATA = "metadata.json"


def rank_dir(tp_rank: int, pp_rank: int) -> str:
    return f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


def build_metadata(hf_config_dict: dict, *, tp: int, pp: int, first_stage_layers: int | None,
                   dtype: torch.dtype, tensors_per_rank: dict[str, int]) -> dict[str, Any]:
    d = W.model_dims(hf_config_dict)
    return {
        "format": FORMAT,
        "version": VERSION,
        "tp": tp,
        "pp": pp,
        "first_stage_layers": first_stage_layers,
        "layer_split": W.layer_split(d.layers, pp, first_stage_layers),
        "padded_vocab_size": W.padded_vocab_size(d.vocab, tp),
        "dtype": str(dtype).removeprefix("torch."),
        "hf_config": hf_config_dict,
        "ranks": tensors_per_rank,
    }


def rank_file(root: Path, tp_rank: int, pp_rank: int) -> tuple[Path, dict[str, str]]:
    """``(root/mp_rank_XX_YYY/model.safetensors, its header metadata)``; creates the rank dir."""
    (root / rank_dir(tp_rank, pp_rank)).mkdir(parents=True, exist_ok=True)
    return root / rank_dir(tp_rank, pp_rank) / "model.safetensors", {"tp_rank": str(tp_rank), "pp_rank": str(pp_rank)}


class McoreCheckpoint:
    """Reads a complete checkpoint written in this format; ``get(tp, pp, name)`` loads one shard."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        meta_path = self.dir / METADATA
        if not meta_path.is_file():
            raise CheckpointError(f"{self.dir} is not a megatron_vrft mcore checkpoint (no {METADATA})")
        if not is_complete(self.dir):
            raise CheckpointError(f"mcore checkpoint {self.dir} is incomplete (no COMPLETE marker): "
                                  "the conversion or save that wrote it did not finish")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise CheckpointError(f"{meta_path}: format {meta.get('format')} v{meta.get('version')}, "
                                  f"expected {FORMAT} v{VERSION}")
        self.meta = meta
        self.tp, self.pp = int(meta["tp"]), int(meta["pp"])
        self.first_stage_layers = meta["first_stage_layers"]
        self.hf_config_dict = meta["hf_config"]
        self.config = W.as_hf_config(self.hf_config_dict)
        self._files: dict[tuple[int, int], SafetensorsFile] = {}

    def _file(self, tp_rank: int, pp_rank: int, name: str) -> SafetensorsFile:
        key = (tp_rank, pp_rank)
        if key not in self._files:
            path = self.dir / rank_dir(tp_rank, pp_rank) / "model.safetensors"
            if not path.is_file():
                raise CheckpointError(f"mcore checkpoint {self.dir} is missing rank file {path}")
            self._files[key] = SafetensorsFile(path)
        if name not in self._files[key].specs:
            raise W.MissingWeightError(f"tensor {name} is absent from {self._files[key].path}")
        return self._files[key]

    def locate(self, tp_rank: int, pp_rank: int, name: str) -> tuple[Path, int, TensorSpec]:
        """``(rank file, offset of the shard's first byte, stored spec)`` (nothing read)."""
        f = self._file(tp_rank, pp_rank, name)
        return f.path, f.locate(name), f.specs[name]

    def get(self, tp_rank: int, pp_rank: int, name: str) -> torch.Tensor:
        """One stored shard (read now)."""
        return self._file(tp_rank, pp_rank, name).get(name)

    def hf_view(self) -> W.McoreAsHF:
        """Canonical HF tensors of this checkpoint, gathered one family at a time."""
        return W.McoreAsHF(self.get, self.config, tp_size=self.tp, pp_size=self.pp,
                           first_stage_layers=self.first_stage_layers)

    def same_layout(self, tp: int, pp: int, first_stage_layers: int | None) -> bool:
        d = W.model_dims(self.config)
        return (self.tp, self.pp) == (tp, pp) and W.layer_split(d.layers, pp, first_stage_layers) == \
            self.meta["layer_split"]

    def close(self) -> None:
        self._files.clear()


def load_mcore_checkpoint(model: torch.nn.Module, path: str | Path, *, first_stage_layers: int | None = None) -> Any:
    """Loads this rank's weights from ``path`` into a built ``Qwen25VLModel`` (current mcore state).

    Same TP/PP/layer split as saved: a direct copy of the rank file. Otherwise reshards through the
    weight map (any saved layout -> the current one). Strict. Returns the checkpoint's HF config.
    """
    ckpt = McoreCheckpoint(path)
    tp_rank, tp, pp_rank, pp = live.parallel_ranks()
    cfg = ckpt.config
    if ckpt.same_layout(tp, pp, first_stage_layers):
        names = W.mcore_shapes(cfg, tp_rank=tp_rank, tp_size=tp, pp_rank=pp_rank, pp_size=pp,
                               first_stage_layers=first_stage_layers)
        produced = ((n, ckpt.get(tp_rank, pp_rank, n)) for n in names)
    else:
        produced = W.hf_to_mcore(ckpt.hf_view(), cfg, tp_rank=tp_rank, tp_size=tp, pp_rank=pp_rank, pp_size=pp,
                                 first_stage_layers=first_stage_layers)
    live.copy_strict(live.model_state(model), produced, where=f"(tp_rank={tp_rank}, pp_rank={pp_rank})")
    ckpt.close()
    return cfg


def save_mcore_checkpoint(model: torch.nn.Module, path: str | Path, hf_config: Any, *,
                          first_stage_layers: int | None = None, overwrite: bool = False) -> None:
    """Collective: every (TP, PP) rank of data-parallel rank 0 writes its rank file; atomic.

    Needs a filesystem shared by all ranks. Rank 0 owns the temp dir, metadata and marker. Each
    rank-local step runs under ``collective.agree``: an error on any rank (a missing parameter, a
    full disk, an existing output) raises ``CollectiveError`` on every rank at once, and nothing
    appears at ``path``.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    tp_rank, tp, pp_rank, pp = live.parallel_ranks()
    cfg = W.as_hf_config(hf_config)
    writer = ps.get_data_parallel_rank() == 0
    rank0 = dist.get_rank() == 0
    ctx = None
    try:
        with agree("save_mcore_checkpoint: planning"):
            state = live.model_state(model)
            names = W.mcore_shapes(cfg, tp_rank=tp_rank, tp_size=tp, pp_rank=pp_rank, pp_size=pp,
                                   first_stage_layers=first_stage_layers)
            missing = sorted(set(names) - set(state))
            if missing:
                raise W.MissingWeightError(f"model (tp_rank={tp_rank}, pp_rank={pp_rank}) lacks parameters {missing[:8]}")
            plan = [TensorSpec(n, state[n].dtype, tuple(state[n].shape)) for n in names]
            if rank0:
                ctx = atomic_dir(path, overwrite=overwrite)
                tmp = [str(ctx.__enter__())]
        counts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(counts, (rank_dir(tp_rank, pp_rank), len(plan), str(plan[0].dtype)) if writer else None)
        if not rank0:
            tmp = [None]
        dist.broadcast_object_list(tmp, src=0)
        with agree("save_mcore_checkpoint: writing rank files"):
            if writer:
                file, rank_meta = rank_file(Path(tmp[0]), tp_rank, pp_rank)
                out = SafetensorsWriter(file, plan, metadata=rank_meta)
                for n in names:
                    out.add(n, state[n].detach().cpu())
                out.close()
        with agree("save_mcore_checkpoint: metadata and rename"):
            if rank0:
                per_rank = {r: n for r, n, _ in filter(None, counts)}
                dtype = getattr(torch, [c for c in counts if c][0][2].removeprefix("torch."))
                meta = build_metadata(cfg.to_dict(), tp=tp, pp=pp, first_stage_layers=first_stage_layers,
                                      dtype=dtype, tensors_per_rank=dict(sorted(per_rank.items())))
                (Path(tmp[0]) / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
                done, ctx = ctx, None
                done.__exit__(None, None, None)
    except BaseException as e:
        if ctx is not None:
            ctx.__exit__(type(e), e, e.__traceback__)
        raise

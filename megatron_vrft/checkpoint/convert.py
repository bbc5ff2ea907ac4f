"""Offline HF <-> mcore checkpoint conversion (the logic behind ``checkpoint_convert/*.py``).

Both directions validate the input completely and plan every output file before creating any
output: shapes come from the weight map (``shard_shape``, ``hf_shapes``), and the bytes of each
output tensor are located in the input files by running the same map on index tensors
(``assemble.FamilyIndex``). Writing then moves those byte ranges into the output files
(``assemble.write_assembled``: reads and per-row gathers into 64 MiB buffers written with
``O_DIRECT``), so no tensor is materialised and peak memory is the plan plus a few buffers
(~0.5 GB with the interpreter, torch and transformers), whatever the model size. Output goes through
``atomic_dir``: nothing appears at the destination unless the whole conversion succeeded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from megatron_vrft.checkpoint.assemble import FamilyIndex, FileTable, Pieces, write_assembled
from megatron_vrft.checkpoint.atomic import CheckpointError, atomic_dir
from megatron_vrft.checkpoint.hf_io import (
    DEFAULT_MAX_SHARD_BYTES,
    HFCheckpoint,
    copy_hf_side_files,
    hf_shards,
    read_hf_config,
    write_hf_index,
)
from megatron_vrft.checkpoint.mcore_io import METADATA, McoreCheckpoint, build_metadata, rank_dir, rank_file
from megatron_vrft.checkpoint.stream import TensorSpec
from megatron_vrft.models.qwen2_5_vl import weights as W

__all__ = ["convert_hf_to_mcore", "convert_mcore_to_hf", "check_same_model", "run_cli"]


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                dynamic_ncols=True)


def _blocks(param: W.Param, tp: int) -> int:
    """Units per row of an HF tensor: a row-parallel split takes one of ``tp`` column blocks."""
    return tp if param.tp_axis == 1 else 1


def _hf_to_mcore_rank(src: HFCheckpoint, d: W.ModelDims, files: FileTable, tp_rank: int, tp_size: int,
                      pp_rank: int, pp_size: int, first_stage_layers: int | None) -> list[tuple[TensorSpec, Pieces]]:
    """The tensors of one rank file, in the model's order, each with its source byte runs."""
    entries = []
    for inst in W.instances(d, pp_size, first_stage_layers):
        if inst.pp_rank == pp_rank:
            fam = FamilyIndex(files, [src.locate(n) for n in inst.hf], _blocks(inst.param, tp_size))
            index = W.split_param(inst.param, fam.inputs, d, tp_rank, tp_size)
            entries.append(fam.entry(inst.mcore, W.shard_shape(inst.param, d, tp_rank, tp_size), index))
    return entries


def convert_hf_to_mcore(hf_dir: str | Path, out_dir: str | Path, *, tp: int = 1, pp: int = 1,
                        first_stage_layers: int | None = None, overwrite: bool = False,
                        progress: bool = True) -> Path:
    """HF Qwen2.5-VL safetensors -> mcore weights checkpoint at TP x PP (format: ``mcore_io``)."""
    src = HFCheckpoint(hf_dir)
    d = W.model_dims(src.config)
    W.check_parallel_sizes(d, tp, pp, first_stage_layers)
    files = FileTable()
    entries = {(t, p): _hf_to_mcore_rank(src, d, files, t, tp, p, pp, first_stage_layers)
               for p in range(pp) for t in range(tp)}
    dtype = src.specs["model.embed_tokens.weight"].dtype
    total = sum(spec.nbytes for rank in entries.values() for spec, _ in rank)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, _progress(total, "hf->mcore", progress) as bar:
        for p in range(pp):  # a stage's TP ranks together: bytes they share are read once
            write_assembled([(*rank_file(tmp, t, p), entries[(t, p)]) for t in range(tp)], files,
                            on_bytes=bar.update)
        meta = build_metadata(src.config_dict, tp=tp, pp=pp, first_stage_layers=first_stage_layers, dtype=dtype,
                              tensors_per_rank={rank_dir(t, p): len(e) for (t, p), e in entries.items()})
        (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    src.close()
    return Path(out_dir)


_CONFIG_FIELDS = {  # ModelDims field -> the config.json field it comes from, for error messages
    "layers": "text_config.num_hidden_layers", "h": "text_config.hidden_size",
    "nh": "text_config.num_attention_heads", "ng": "text_config.num_key_value_heads",
    "ffn": "text_config.intermediate_size", "vocab": "text_config.vocab_size", "tied": "tie_word_embeddings",
    "depth": "vision_config.depth", "vh": "vision_config.hidden_size", "vnh": "vision_config.num_heads",
    "vffn": "vision_config.intermediate_size", "cin": "vision_config.in_channels",
    "tps": "vision_config.temporal_patch_size", "ps": "vision_config.patch_size",
    "vout": "vision_config.out_hidden_size",
}


def check_same_model(cfg: Any, other: Any, where: Path) -> None:
    a, b = W.model_dims(cfg), W.model_dims(other)
    for field in a.__dataclass_fields__:
        if getattr(a, field) != getattr(b, field):
            raise CheckpointError(
                f"HF config at {where} does not match the checkpoint's config: {_CONFIG_FIELDS.get(field, field)} "
                f"is {getattr(b, field)} there, {getattr(a, field)} in the checkpoint")


def _mcore_to_hf_plan(ck: McoreCheckpoint, files: FileTable) -> list[tuple[TensorSpec, Pieces]]:
    """The HF tensors in release order, each with its source byte runs; shard shapes are checked."""
    d, hf_shapes = W.model_dims(ck.config), W.hf_shapes(ck.config)
    entries = []
    for inst in W.instances(d, ck.pp, ck.first_stage_layers):
        if not inst.export:
            continue
        located = [ck.locate(r, inst.pp_rank, inst.mcore) for r in range(ck.tp)]
        for r, (path, _, spec) in enumerate(located):
            want = W.shard_shape(inst.param, d, r, ck.tp)
            if spec.shape != want:
                raise W.WeightShapeError(f"mcore tensor {inst.mcore} (tp_rank={r}, pp_rank={inst.pp_rank}) in {path} "
                                         f"has shape {list(spec.shape)}, expected {list(want)}")
        # shards are merged along rows or along columns: either way whole shard rows are the units
        fam = FamilyIndex(files, located, 1)
        for name, index in zip(inst.hf, W.merge_param(inst.param, fam.inputs, d)):
            entries.append(fam.entry(name, hf_shapes[name], index))
    return entries


def convert_mcore_to_hf(mcore_dir: str | Path, out_dir: str | Path, *, hf_config_dir: str | Path | None = None,
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False,
                        progress: bool = True) -> Path:
    """mcore weights checkpoint (any TP/PP) -> HF released-layout safetensors + config.json.

    With ``hf_config_dir`` its config.json, generation config, tokenizer and processor files are
    copied (after checking the config describes the same model); otherwise the checkpoint's stored
    HF config is written.
    """
    ck = McoreCheckpoint(mcore_dir)
    cfg = ck.config
    if hf_config_dir is not None:
        check_same_model(cfg, read_hf_config(hf_config_dir)[1], Path(hf_config_dir))
    files = FileTable()
    plan = dict(_mcore_to_hf_plan(ck, files))
    shards = hf_shards(list(plan), max_shard_bytes)
    with atomic_dir(out_dir, overwrite=overwrite, marker=False) as tmp, \
            _progress(sum(s.nbytes for s in plan), "mcore->hf", progress) as bar:
        for fname, group in shards:
            write_assembled([(tmp / fname, None, [(spec, plan[spec]) for spec in group])], files,
                            on_bytes=bar.update)
        write_hf_index(tmp, shards)
        if hf_config_dir is not None:
            copy_hf_side_files(Path(hf_config_dir), tmp)
        else:
            (tmp / "config.json").write_text(json.dumps(ck.hf_config_dict, indent=2) + "\n")
    ck.close()
    return Path(out_dir)


def run_cli(main) -> None:
    """Runs a converter's ``main()``; a user error (any ``ValueError`` subclass this package defines:
    a bad checkpoint, config, shape or TP/PP size) prints one ``error:`` line and exits 2 instead of
    a traceback. Other exceptions (bugs) keep their traceback.

    After success the process ends with ``os._exit(0)``: the output is complete, fsynced and
    renamed, and the interpreter's normal teardown of torch and transformers would add ~0.7 s
    (a tenth of converting a 3B checkpoint) for nothing."""
    import os
    import sys

    try:
        main()
    except ValueError as e:
        if not type(e).__module__.startswith("megatron_vrft."):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

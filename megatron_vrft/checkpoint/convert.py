"""Offline HF <-> mcore checkpoint conversion (the logic behind ``checkpoint_convert/*.py``).

Both directions validate the input completely before creating any output, plan every output file
from tensor metadata alone (meta tensors, no data read), then stream: one HF tensor is read, the
weight map turns it into one rank's shard (or one full HF tensor), and the streaming safetensors
writer appends it to the file. Peak memory is therefore about one parameter family plus the
pages of the input shards the OS keeps mapped, whatever the model size. Output goes through
``atomic_dir``: nothing appears at the destination unless the whole conversion succeeded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from megatron_vrft.checkpoint.atomic import CheckpointError, atomic_dir
from megatron_vrft.checkpoint.hf_io import (
    DEFAULT_MAX_SHARD_BYTES,
    HFCheckpoint,
    copy_hf_side_files,
    read_hf_config,
    write_hf_checkpoint,
)
from megatron_vrft.checkpoint.mcore_io import METADATA, McoreCheckpoint, build_metadata, rank_dir, rank_writer
from megatron_vrft.checkpoint.stream import TensorSpec, WriteBehind
from megatron_vrft.models.qwen2_5_vl import weights as W

__all__ = ["convert_hf_to_mcore", "convert_mcore_to_hf", "check_same_model", "run_cli"]


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                dynamic_ncols=True)


class _RecentReads:
    """``get`` with the last three tensors kept: TP rank r+1 asks for the family rank r just read
    (a family has at most three HF tensors: q, k, v)."""

    def __init__(self, get):
        self._get, self._recent = get, {}

    def __call__(self, name: str):
        if name not in self._recent:
            if len(self._recent) == 3:
                self._recent.pop(next(iter(self._recent)))
            self._recent[name] = self._get(name)
        return self._recent[name]


def _plan(tensors) -> list[TensorSpec]:
    return [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors]


def convert_hf_to_mcore(hf_dir: str | Path, out_dir: str | Path, *, tp: int = 1, pp: int = 1,
                        first_stage_layers: int | None = None, overwrite: bool = False,
                        progress: bool = True) -> Path:
    """HF Qwen2.5-VL safetensors -> mcore weights checkpoint at TP x PP (format: ``mcore_io``)."""
    src = HFCheckpoint(hf_dir)
    cfg = src.config
    W.check_parallel_sizes(W.model_dims(cfg), tp, pp, first_stage_layers)
    ranks = [(t, p) for p in range(pp) for t in range(tp)]
    kw = dict(tp_size=tp, pp_size=pp, first_stage_layers=first_stage_layers)
    plans = {r: _plan(W.hf_to_mcore(src.meta, cfg, tp_rank=r[0], pp_rank=r[1], **kw)) for r in ranks}
    dtype = src.specs["model.embed_tokens.weight"].dtype
    total = sum(s.nbytes for plan in plans.values() for s in plan)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, _progress(total, "hf->mcore", progress) as bar, \
            WriteBehind() as behind:
        for p in range(pp):
            # all TP ranks of a stage in lockstep: each HF tensor is read once for every rank
            bar.set_postfix_str(f"pp stage {p}")
            reads = _RecentReads(src.get)
            writers = [rank_writer(tmp, t, p, plans[(t, p)], on_tensor=bar.update, write_behind=behind)
                       for t in range(tp)]
            shards = (W.hf_to_mcore(reads, cfg, tp_rank=t, pp_rank=p, compact=False, **kw) for t in range(tp))
            try:
                for items in zip(*shards):
                    for writer, (name, shard) in zip(writers, items):
                        writer.add(name, shard)
            except BaseException:
                for writer in writers:
                    writer.abort()
                raise
            for writer in writers:
                writer.close()
        meta = build_metadata(src.config_dict, tp=tp, pp=pp, first_stage_layers=first_stage_layers, dtype=dtype,
                              tensors_per_rank={rank_dir(t, p): len(plans[(t, p)]) for t, p in ranks})
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
    kw = dict(tp_size=ck.tp, pp_size=ck.pp, first_stage_layers=ck.first_stage_layers)
    plan = _plan(W.mcore_to_hf(ck.meta_tensor, cfg, **kw))
    with atomic_dir(out_dir, overwrite=overwrite, marker=False) as tmp, \
            _progress(sum(s.nbytes for s in plan), "mcore->hf", progress) as bar:
        with WriteBehind() as behind:
            write_hf_checkpoint(tmp, plan, W.mcore_to_hf(ck.get, cfg, **kw), max_shard_bytes=max_shard_bytes,
                                on_tensor=bar.update, write_behind=behind)
        if hf_config_dir is not None:
            copy_hf_side_files(Path(hf_config_dir), tmp)
        else:
            (tmp / "config.json").write_text(json.dumps(ck.hf_config_dict, indent=2) + "\n")
    ck.close()
    return Path(out_dir)


def run_cli(main) -> None:
    """Runs a converter's ``main()``; a user error (any ``ValueError`` subclass we raise, e.g. a bad
    checkpoint or TP size) prints one ``error:`` line and exits 2 instead of a traceback."""
    import sys

    try:
        main()
    except (CheckpointError, W.WeightMapError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)

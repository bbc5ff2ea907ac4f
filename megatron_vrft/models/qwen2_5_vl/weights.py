"""The one HF <-> Megatron-Core parameter map for Qwen2.5-VL, and everything derived from it.

``PARAMS`` below is the single source of truth: one row per parameter family with the HF name(s)
(canonical = the released checkpoints' layout: ``visual.*``, ``model.*``, ``lm_head.weight``), the
local mcore name (the table in docs/checkpoints.md, "One weight map"), the transform, the TP split axis and the pipeline
stage the parameter lives on. Every user derives from it:

- ``hf_to_mcore`` / ``mcore_to_hf``: pure, streaming conversions of one (TP, PP) rank / of a whole
  sharded model, reading tensors lazily through callables (offline converters, resharding loader);
- ``live.load_into_model`` / ``live.export_hf_state``: the same maps applied to a live model under
  the current mcore parallel state (parity tests; the rollout weight sync and HF export).

Transforms (``Kind``), with mcore's TP layout:
- ``COPY``: identity, then split along ``tp_axis`` (0 = column-parallel rows, 1 = row-parallel
  columns, None = replicated); vocab-sized tensors are zero-padded to ``padded_vocab_size``.
- ``LLM_QKV``: q/k/v fused per query group: ``[q heads of group g; k_g; v_g]`` for each g, so TP
  rank r holds a contiguous run of whole groups.
- ``VISION_QKV``: HF fuses ``[Q all heads; K; V]``; mcore wants per head ``[q_h; k_h; v_h]``.
- ``GATE_UP``: TP rank r holds ``[gate_r; up_r]`` (not a global ``[gate; up]``). Never used for the
  merger's ``linear_fc1`` (GELU, not gated).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch

__all__ = [
    "Kind", "Scope", "Param", "PARAMS", "ModelDims", "WeightMapError", "UnsupportedConfigError",
    "ParallelSizeError", "WeightShapeError", "MissingWeightError", "read_hf_key", "model_dims",
    "padded_vocab_size", "layer_split", "check_parallel_sizes", "hf_shape", "hf_shapes", "shard_shape",
    "mcore_shapes",
    "Instance", "instances", "hf_to_mcore", "mcore_to_hf", "McoreAsHF", "split_param", "merge_param", "as_hf_config",
]


class WeightMapError(ValueError):
    """Base class of every user-facing error raised by the weight map."""


class UnsupportedConfigError(WeightMapError):
    """The config is not a Qwen2.5-VL config (or lacks a field the map needs)."""


class ParallelSizeError(WeightMapError):
    """A TP/PP size (or layer split) that this model's shapes cannot be split into."""


class WeightShapeError(WeightMapError):
    """A tensor whose shape is not the one the config implies."""


class MissingWeightError(WeightMapError):
    """A tensor the map needs is absent (or a model has keys the map does not produce)."""


class Kind(enum.Enum):
    COPY = "copy"
    LLM_QKV = "llm_qkv"
    VISION_QKV = "vision_qkv"
    GATE_UP = "gate_up"


class Scope(enum.Enum):
    """Where a family lives: which PP stage, and whether ``{i}`` runs over ViT blocks or LLM layers."""

    VISION = "vision"  # first stage, once
    VISION_LAYER = "vision_layer"  # first stage, i over vision blocks (never split by PP)
    EMBED = "embed"  # first stage, once
    LAYER = "layer"  # i over LLM layers; HF uses the global index, mcore the stage-local one
    FINAL = "final"  # last stage, once
    OUTPUT = "output"  # last stage; tied: absent at PP=1, a copy of embed_tokens at PP>1


@dataclass(frozen=True)
class Param:
    """One parameter family. ``shapes`` gives, per HF name, its dims as ``ModelDims`` attributes."""

    hf: tuple[str, ...]
    mcore: str
    kind: Kind
    tp_axis: int | None
    shapes: tuple[tuple[str, ...], ...]
    scope: Scope
    pad_vocab: bool = False


_VB, _VM = "visual.blocks.{i}.", "vision_model.decoder.layers.{i}."
_LB, _LM = "model.layers.{i}.", "language_model.decoder.layers.{i}."
_C, _QKV, _VQKV, _GU = Kind.COPY, Kind.LLM_QKV, Kind.VISION_QKV, Kind.GATE_UP
_S = Scope

PARAMS: tuple[Param, ...] = (
    # --- vision tower (first stage) ---
    Param(("visual.patch_embed.proj.weight",), "vision_model.patch_embed.proj.weight", _C, None,
          (("vh", "cin", "tps", "ps", "ps"),), _S.VISION),
    Param((_VB + "norm1.weight",), _VM + "input_layernorm.weight", _C, None, (("vh",),), _S.VISION_LAYER),
    Param((_VB + "attn.qkv.weight",), _VM + "self_attention.linear_qkv.weight", _VQKV, 0,
          (("vqkv", "vh"),), _S.VISION_LAYER),
    Param((_VB + "attn.qkv.bias",), _VM + "self_attention.linear_qkv.bias", _VQKV, 0, (("vqkv",),),
          _S.VISION_LAYER),
    Param((_VB + "attn.proj.weight",), _VM + "self_attention.linear_proj.weight", _C, 1, (("vh", "vh"),),
          _S.VISION_LAYER),
    Param((_VB + "attn.proj.bias",), _VM + "self_attention.linear_proj.bias", _C, None, (("vh",),),
          _S.VISION_LAYER),
    Param((_VB + "norm2.weight",), _VM + "pre_mlp_layernorm.weight", _C, None, (("vh",),), _S.VISION_LAYER),
    Param((_VB + "mlp.gate_proj.weight", _VB + "mlp.up_proj.weight"), _VM + "mlp.linear_fc1.weight", _GU, 0,
          (("vffn", "vh"), ("vffn", "vh")), _S.VISION_LAYER),
    Param((_VB + "mlp.gate_proj.bias", _VB + "mlp.up_proj.bias"), _VM + "mlp.linear_fc1.bias", _GU, 0,
          (("vffn",), ("vffn",)), _S.VISION_LAYER),
    Param((_VB + "mlp.down_proj.weight",), _VM + "mlp.linear_fc2.weight", _C, 1, (("vh", "vffn"),),
          _S.VISION_LAYER),
    Param((_VB + "mlp.down_proj.bias",), _VM + "mlp.linear_fc2.bias", _C, None, (("vh",),), _S.VISION_LAYER),
    Param(("visual.merger.ln_q.weight",), "vision_model.decoder.final_layernorm.weight", _C, None, (("vh",),),
          _S.VISION),
    Param(("visual.merger.mlp.0.weight",), "vision_model.projection.encoder.linear_fc1.weight", _C, 0,
          (("vmerge", "vmerge"),), _S.VISION),
    Param(("visual.merger.mlp.0.bias",), "vision_model.projection.encoder.linear_fc1.bias", _C, 0,
          (("vmerge",),), _S.VISION),
    Param(("visual.merger.mlp.2.weight",), "vision_model.projection.encoder.linear_fc2.weight", _C, 1,
          (("vout", "vmerge"),), _S.VISION),
    Param(("visual.merger.mlp.2.bias",), "vision_model.projection.encoder.linear_fc2.bias", _C, None,
          (("vout",),), _S.VISION),
    # --- language model ---
    Param(("model.embed_tokens.weight",), "language_model.embedding.word_embeddings.weight", _C, 0,
          (("vocab", "h"),), _S.EMBED, pad_vocab=True),
    Param((_LB + "input_layernorm.weight",), _LM + "input_layernorm.weight", _C, None, (("h",),), _S.LAYER),
    Param(tuple(_LB + f"self_attn.{p}_proj.weight" for p in "qkv"), _LM + "self_attention.linear_qkv.weight",
          _QKV, 0, (("q", "h"), ("kv", "h"), ("kv", "h")), _S.LAYER),
    Param(tuple(_LB + f"self_attn.{p}_proj.bias" for p in "qkv"), _LM + "self_attention.linear_qkv.bias",
          _QKV, 0, (("q",), ("kv",), ("kv",)), _S.LAYER),
    Param((_LB + "self_attn.o_proj.weight",), _LM + "self_attention.linear_proj.weight", _C, 1, (("h", "q"),),
          _S.LAYER),
    Param((_LB + "post_attention_layernorm.weight",), _LM + "pre_mlp_layernorm.weight", _C, None, (("h",),),
          _S.LAYER),
    Param((_LB + "mlp.gate_proj.weight", _LB + "mlp.up_proj.weight"), _LM + "mlp.linear_fc1.weight", _GU, 0,
          (("ffn", "h"), ("ffn", "h")), _S.LAYER),
    Param((_LB + "mlp.down_proj.weight",), _LM + "mlp.linear_fc2.weight", _C, 1, (("h", "ffn"),), _S.LAYER),
    Param(("model.norm.weight",), "language_model.decoder.final_layernorm.weight", _C, None, (("h",),),
          _S.FINAL),
    Param(("lm_head.weight",), "language_model.output_layer.weight", _C, 0, (("vocab", "h"),), _S.OUTPUT,
          pad_vocab=True),
)


def read_hf_key(name: str) -> str:
    """Canonical (released-layout) name of an HF parameter given in either layout.

    ``model.visual.X -> visual.X``, ``model.language_model.X -> model.X``; released names
    (``visual.*``, ``model.*``, ``lm_head.weight``) are returned unchanged.
    """
    if name.startswith("model.visual."):
        return name[len("model.") :]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith(("visual.", "model.")) or name == "lm_head.weight":
        return name
    raise MissingWeightError(f"HF tensor name {name!r} is not a Qwen2.5-VL parameter name")


@dataclass(frozen=True)
class ModelDims:
    """The sizes the map needs, read once from an HF ``Qwen2_5_VLConfig``."""

    layers: int
    h: int
    nh: int
    ng: int
    hd: int
    ffn: int
    vocab: int
    tied: bool
    depth: int
    vh: int
    vnh: int
    vffn: int
    cin: int
    tps: int
    ps: int
    vmerge: int
    vout: int

    @property
    def q(self) -> int:
        return self.nh * self.hd

    @property
    def kv(self) -> int:
        return self.ng * self.hd

    @property
    def vqkv(self) -> int:
        return 3 * self.vh


def as_hf_config(hf_config: Any) -> Any:
    """A ``Qwen2_5_VLConfig`` from a config object (returned as is) or a ``config.json`` dict."""
    if isinstance(hf_config, Mapping):
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig.from_dict(dict(hf_config))
    return hf_config


def model_dims(hf_config: Any) -> ModelDims:
    """``ModelDims`` from a ``Qwen2_5_VLConfig`` (or its ``config.json`` dict)."""
    cfg = as_hf_config(hf_config)
    model_type = getattr(cfg, "model_type", None)
    if model_type != "qwen2_5_vl":
        raise UnsupportedConfigError(f"HF config has model_type={model_type}, expected qwen2_5_vl")
    t, v = cfg.text_config, cfg.vision_config

    def _int(x: Any) -> int:
        return int(x[0] if isinstance(x, (list, tuple)) else x)

    return ModelDims(
        layers=t.num_hidden_layers,
        h=t.hidden_size,
        nh=t.num_attention_heads,
        ng=t.num_key_value_heads,
        hd=t.hidden_size // t.num_attention_heads,
        ffn=t.intermediate_size,
        vocab=t.vocab_size,
        tied=bool(cfg.tie_word_embeddings),
        depth=v.depth,
        vh=v.hidden_size,
        vnh=v.num_heads,
        vffn=v.intermediate_size,
        cin=getattr(v, "in_channels", getattr(v, "in_chans", 3)),
        tps=_int(v.temporal_patch_size),
        ps=_int(v.patch_size),
        vmerge=v.hidden_size * v.spatial_merge_size**2,
        vout=v.out_hidden_size,
    )


def padded_vocab_size(vocab: int, tp: int) -> int:
    """Rows of the (vocab-parallel) embedding / output layer: ``ceil(vocab / tp) * tp``."""
    return -(-vocab // tp) * tp


def layer_split(num_layers: int, pp: int, first_stage_layers: int | None = None) -> list[int]:
    """LLM layers per PP stage.

    Even split with the remainder going to the last stages; ``first_stage_layers`` fixes stage 0
    (which also runs the ViT) and splits the rest the same way. Every stage gets >= 1 layer. At
    PP=1 the knob is moot and ignored.
    """
    if pp < 1:
        raise ParallelSizeError(f"pipeline-parallel size must be >= 1, got {pp}")
    if pp == 1:
        return [num_layers]
    if first_stage_layers is None:
        base, rem = divmod(num_layers, pp)
        split = [base] * (pp - rem) + [base + 1] * rem
    else:
        if not 1 <= first_stage_layers < num_layers:
            raise ParallelSizeError(
                f"first_stage_layers={first_stage_layers} must be in [1, {num_layers - 1}] "
                f"(text_config.num_hidden_layers={num_layers}, pp={pp})"
            )
        base, rem = divmod(num_layers - first_stage_layers, pp - 1)
        split = [first_stage_layers] + [base] * (pp - 1 - rem) + [base + 1] * rem
    if min(split) < 1:
        raise ParallelSizeError(
            f"cannot split text_config.num_hidden_layers={num_layers} into pp={pp} stages "
            f"(first_stage_layers={first_stage_layers}): a stage would get no layer"
        )
    return split


def check_parallel_sizes(d: ModelDims, tp: int, pp: int, first_stage_layers: int | None = None) -> None:
    """Raises ``ParallelSizeError`` naming the config field when ``tp``/``pp`` cannot split it."""
    if tp < 1:
        raise ParallelSizeError(f"tensor-parallel size must be >= 1, got {tp}")
    fields = {
        "text_config.num_attention_heads": d.nh,
        "text_config.intermediate_size": d.ffn,
        "vision_config.num_heads": d.vnh,
        "vision_config.intermediate_size": d.vffn,
        "vision_config.hidden_size * spatial_merge_size**2": d.vmerge,
    }
    for field, value in fields.items():
        if value % tp:
            raise ParallelSizeError(f"tensor-parallel size {tp} does not divide {field}={value}")
    # TP > num_key_value_heads is fine when TP is a multiple of it: mcore 0.16 then chunks the fused
    # group-interleaved qkv rows as usual and all-gathers them in attention (get_query_key_value_tensors).
    if d.ng % tp and tp % d.ng:
        raise ParallelSizeError(
            f"tensor-parallel size {tp} neither divides nor is a multiple of text_config.num_key_value_heads={d.ng}"
        )
    layer_split(d.layers, pp, first_stage_layers)


@dataclass(frozen=True)
class Instance:
    """One parameter of the model: family row + formatted names + owning PP stage."""

    param: Param
    hf: tuple[str, ...]
    mcore: str
    pp_rank: int
    export: bool  # False for the tied output layer's copy of embed_tokens


def instances(d: ModelDims, pp_size: int, first_stage_layers: int | None) -> Iterator[Instance]:
    """Every parameter of the model in checkpoint order (ViT, merger, embedding, layers by stage,
    final norm, output layer); what ``hf_to_mcore`` / ``mcore_to_hf`` and the byte-level
    converters iterate over."""
    split = layer_split(d.layers, pp_size, first_stage_layers)
    offsets = [sum(split[:s]) for s in range(pp_size)]
    by_scope: dict[Scope, list[Param]] = {}
    for p in PARAMS:
        by_scope.setdefault(p.scope, []).append(p)

    def fmt(p: Param, i: int, local: int) -> tuple[tuple[str, ...], str]:
        return tuple(n.format(i=i) for n in p.hf), p.mcore.format(i=local)

    vision = by_scope[Scope.VISION]
    yield Instance(vision[0], *fmt(vision[0], 0, 0), 0, True)  # patch_embed first, merger after blocks
    for i in range(d.depth):
        for p in by_scope[Scope.VISION_LAYER]:
            yield Instance(p, *fmt(p, i, i), 0, True)
    for p in vision[1:] + by_scope[Scope.EMBED]:
        yield Instance(p, *fmt(p, 0, 0), 0, True)
    for stage in range(pp_size):
        for local in range(split[stage]):
            for p in by_scope[Scope.LAYER]:
                yield Instance(p, *fmt(p, offsets[stage] + local, local), stage, True)
    for p in by_scope[Scope.FINAL]:
        yield Instance(p, *fmt(p, 0, 0), pp_size - 1, True)
    (out,) = by_scope[Scope.OUTPUT]
    if not d.tied:
        yield Instance(out, out.hf, out.mcore, pp_size - 1, True)
    elif pp_size > 1:
        yield Instance(out, ("model.embed_tokens.weight",), out.mcore, pp_size - 1, False)


def split_param(p: Param, ts: list[torch.Tensor], d: ModelDims, r: int, tp: int) -> torch.Tensor:
    """HF tensor(s) -> TP rank ``r``'s mcore shard (may be a view)."""
    tail = ts[0].shape[1:]
    if p.kind is Kind.GATE_UP:  # [F, *] x2 -> [2F/tp, *]
        return torch.cat([ts[0].chunk(tp, 0)[r], ts[1].chunk(tp, 0)[r]], 0)
    if p.kind is Kind.LLM_QKV:  # [nh*hd], [ng*hd], [ng*hd] (x tail) -> [ng*(nh/ng+2)*hd, *]
        full = torch.cat([t.reshape(d.ng, -1, *tail) for t in ts], 1).reshape(-1, *tail)
    elif p.kind is Kind.VISION_QKV:  # [3*vnh*vhd, *]: (3, head) -> (head, 3)
        full = ts[0].reshape(3, d.vnh, -1, *tail).transpose(0, 1).reshape(-1, *tail)
    elif p.pad_vocab:  # rows [r*V'/tp, (r+1)*V'/tp) of the zero-padded [V', *]; no padded full copy
        rows = padded_vocab_size(d.vocab, tp) // tp
        lo = r * rows
        n = max(0, min(rows, d.vocab - lo))
        out = torch.zeros(rows, *tail, dtype=ts[0].dtype, device=ts[0].device)
        out[:n] = ts[0][lo : lo + n]
        return out
    else:
        full = ts[0]
    return full if p.tp_axis is None else full.chunk(tp, p.tp_axis)[r]


def merge_param(p: Param, shards: list[torch.Tensor], d: ModelDims) -> tuple[torch.Tensor, ...]:
    """All TP ranks' mcore shards -> the family's full HF tensor(s) (inverse of ``split_param``)."""
    if p.kind is Kind.GATE_UP:
        halves = [s.chunk(2, 0) for s in shards]
        return torch.cat([g for g, _ in halves], 0), torch.cat([u for _, u in halves], 0)
    full = shards[0] if p.tp_axis is None or len(shards) == 1 else torch.cat(shards, p.tp_axis)
    tail = full.shape[1:]
    if p.kind is Kind.LLM_QKV:
        r = d.nh // d.ng
        q, k, v = full.reshape(d.ng, -1, *tail).split([r * d.hd, d.hd, d.hd], 1)
        return tuple(t.reshape(-1, *tail) for t in (q, k, v))
    if p.kind is Kind.VISION_QKV:
        return (full.reshape(d.vnh, 3, -1, *tail).transpose(0, 1).reshape(-1, *tail),)
    if p.pad_vocab:
        return (full[: d.vocab].clone(),)
    return (full,)


def hf_shape(p: Param, j: int, d: ModelDims) -> tuple[int, ...]:
    """Shape of the j-th HF tensor of family ``p`` for these model dims."""
    return tuple(getattr(d, a) for a in p.shapes[j])


def hf_shapes(hf_config: Any) -> dict[str, tuple[int, ...]]:
    """Canonical HF name -> shape of every tensor a released checkpoint of this config holds."""
    d = model_dims(hf_config)
    return {n: hf_shape(i.param, j, d) for i in instances(d, 1, None) if i.export for j, n in enumerate(i.hf)}


def shard_shape(p: Param, d: ModelDims, r: int, tp: int) -> tuple[int, ...]:
    """Shape of TP rank ``r``'s shard of family ``p`` (``split_param``'s output), computed on
    ``[rows, column blocks]`` int8 stand-ins: a split moves whole rows or one of ``tp`` column
    blocks, so that is all the shape depends on; meta tensors would import torch._dynamo (~1.5 s)."""
    hf = [hf_shape(p, j, d) for j in range(len(p.hf))]
    blocks = tp if p.tp_axis == 1 else 1
    stand_ins = [torch.zeros(s[0], *([blocks] if len(s) > 1 else []), dtype=torch.int8) for s in hf]
    out = split_param(p, stand_ins, d, r, tp)
    return tuple(out.shape) if len(hf[0]) == 1 else (out.shape[0], hf[0][1] * out.shape[1] // blocks, *hf[0][2:])


def mcore_shapes(
    hf_config: Any, *, tp_rank: int, tp_size: int, pp_rank: int, pp_size: int, first_stage_layers: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Local mcore name -> shard shape on one (TP, PP) rank."""
    d = model_dims(hf_config)
    check_parallel_sizes(d, tp_size, pp_size, first_stage_layers)
    return {i.mcore: shard_shape(i.param, d, tp_rank, tp_size) for i in instances(d, pp_size, first_stage_layers)
            if i.pp_rank == pp_rank}


def hf_to_mcore(
    get_hf: Callable[[str], torch.Tensor],
    hf_config: Any,
    *,
    tp_rank: int,
    tp_size: int,
    pp_rank: int,
    pp_size: int,
    first_stage_layers: int | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields ``(local mcore name, shard)`` for every parameter of one (TP, PP) rank.

    ``get_hf(canonical HF name)`` is called lazily, once per HF tensor the rank needs, so callers
    can stream from disk. Shards are fresh tensors that own exactly their memory (safe to keep:
    they never alias the caller's tensors nor keep a full HF tensor alive). Raises
    ``WeightShapeError`` naming the tensor when a shape disagrees with the config.
    """
    d = model_dims(hf_config)
    check_parallel_sizes(d, tp_size, pp_size, first_stage_layers)
    for inst in instances(d, pp_size, first_stage_layers):
        if inst.pp_rank != pp_rank:
            continue
        ts = []
        for j, name in enumerate(inst.hf):
            t = get_hf(name)
            want = hf_shape(inst.param, j, d)
            if tuple(t.shape) != want:
                raise WeightShapeError(f"HF tensor {name} has shape {list(t.shape)}, expected {list(want)}")
            ts.append(t)
        shard = split_param(inst.param, ts, d, tp_rank, tp_size)
        yield inst.mcore, _fresh(shard, ts)


def _fresh(t: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """``t`` itself when it already owns exactly its storage, else a compact copy (so a shard never
    aliases the caller's tensors nor keeps a full fused tensor alive)."""
    if t.device.type == "meta":
        return t
    storage = t.untyped_storage()
    shared = any(storage.data_ptr() == x.untyped_storage().data_ptr() for x in inputs)
    if shared or storage.nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        return t.clone(memory_format=torch.contiguous_format)
    return t


def mcore_to_hf(
    get_mcore: Callable[[int, int, str], torch.Tensor],
    hf_config: Any,
    *,
    tp_size: int,
    pp_size: int,
    first_stage_layers: int | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields ``(canonical HF name, full tensor)`` for every tensor of the released layout.

    ``get_mcore(tp_rank, pp_rank, local mcore name)`` returns one shard; it is called for each TP
    rank of one family at a time, so at most one family's shards are alive. Tied embeddings give no
    ``lm_head.weight``. Shard shapes are checked against the config (``WeightShapeError``).
    """
    d = model_dims(hf_config)
    check_parallel_sizes(d, tp_size, pp_size, first_stage_layers)
    for inst in instances(d, pp_size, first_stage_layers):
        if not inst.export:
            continue
        yield from zip(inst.hf, _gather_inst(inst, get_mcore, d, tp_size))


def _gather_inst(inst: Instance, get_mcore: Callable, d: ModelDims, tp_size: int) -> tuple[torch.Tensor, ...]:
    shards = []
    for r in range(tp_size):
        t = get_mcore(r, inst.pp_rank, inst.mcore)
        want = shard_shape(inst.param, d, r, tp_size)
        if tuple(t.shape) != want:
            raise WeightShapeError(
                f"mcore tensor {inst.mcore} (tp_rank={r}, pp_rank={inst.pp_rank}) has shape "
                f"{list(t.shape)}, expected {list(want)}"
            )
        shards.append(t)
    return merge_param(inst.param, shards, d)


class McoreAsHF:
    """Random access to canonical HF tensors of a TP/PP-sharded mcore model, one family at a time.

    ``McoreAsHF(get_mcore, cfg, tp_size=.., pp_size=..)(name)`` gathers the family holding
    ``name`` and keeps only that family's tensors cached, so ``hf_to_mcore(McoreAsHF(...), ...)``
    reshards to another TP/PP while holding at most one family in memory.
    """

    def __init__(self, get_mcore: Callable[[int, int, str], torch.Tensor], hf_config: Any, *, tp_size: int,
                 pp_size: int, first_stage_layers: int | None = None):
        self._get, self._d, self._tp = get_mcore, model_dims(hf_config), tp_size
        check_parallel_sizes(self._d, tp_size, pp_size, first_stage_layers)
        self._by_name = {
            n: inst for inst in instances(self._d, pp_size, first_stage_layers) if inst.export for n in inst.hf
        }
        self._cache: tuple[Instance | None, dict[str, torch.Tensor]] = (None, {})

    def __call__(self, name: str) -> torch.Tensor:
        name = read_hf_key(name)
        if name == "lm_head.weight" and self._d.tied:
            name = "model.embed_tokens.weight"
        inst = self._by_name.get(name)
        if inst is None:
            raise MissingWeightError(f"HF tensor {name} is not part of this Qwen2.5-VL config")
        if self._cache[0] is not inst:
            self._cache = (inst, dict(zip(inst.hf, _gather_inst(inst, self._get, self._d, self._tp))))
        return self._cache[1][name]

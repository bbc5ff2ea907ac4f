"""HF ``Qwen2_5_VLConfig`` -> Megatron-Core ``TransformerConfig``s for the ViT, the patch merger and
the language model, with the checks that must pass before anything is built.

Everything the mcore model needs is read from the HF config (never from per-size tables): vision
``intermediate_size`` (3420 for 3B/7B, 3456 for 32B/72B), ``tokens_per_second``, ``rope_theta``,
``rms_norm_eps``, ``tie_word_embeddings`` (top level of the VL config, not ``text_config``).

Parallelism rules: ``weights.check_parallel_sizes`` (the one implementation, shared with the
converters; ``ParallelSizeError`` names the HF key and the TP/PP value):
- LLM: ``num_attention_heads % tp == 0``; ``num_key_value_heads`` a multiple *or* a divisor of TP
  (mcore 0.16 replicates KV groups when TP > groups); ``intermediate_size % tp == 0``.
- ViT (TP-sharded like the LLM, not replicated): ``num_heads % tp == 0``,
  ``intermediate_size % tp == 0`` (3420 allows TP in {1, 2, 4} only), merger width
  ``hidden_size * spatial_merge_size**2`` divisible by TP.
- PP: every stage gets >= 1 LLM layer under ``weights.layer_split``.
Other config problems (activation, vision head dim, full-attention indexes, mRoPE sections) raise
``Qwen25VLConfigError``.
The vocabulary is padded to a multiple of TP (``padded_vocab_size``); the model masks the padding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

__all__ = ["Qwen25VLConfigError", "VisionSpec", "Qwen25VLMcoreConfig", "mcore_configs", "validate_parallelism"]

# HF ``hidden_act`` -> the mcore activation (exact GELU, as torch.nn.GELU() in HF's merger).
_ACTIVATIONS: dict[str, Callable] = {"silu": F.silu, "gelu": F.gelu}

# HF hard-codes eps=1e-6 for every vision RMSNorm (blocks and merger.ln_q), whatever the text eps.
VISION_RMSNORM_EPS = 1e-6


class Qwen25VLConfigError(ValueError):
    """The HF config cannot be built as an mcore model with the requested parallelism."""


@dataclass(frozen=True)
class VisionSpec:
    """The ViT facts that are not part of a ``TransformerConfig``."""

    patch_size: int
    temporal_patch_size: int
    in_channels: int
    spatial_merge_size: int
    window_size: int
    fullatt_block_indexes: tuple[int, ...]
    rope_theta: float

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch in ``pixel_values`` (C * Tp * P * P)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class Qwen25VLMcoreConfig:
    """Everything ``Qwen25VLModel`` is built from."""

    language: TransformerConfig
    vision: TransformerConfig
    projection: TransformerConfig
    vision_spec: VisionSpec
    vocab_size: int
    padded_vocab_size: int
    rotary_base: int
    max_sequence_length: int
    tie_word_embeddings: bool
    image_token_id: int
    video_token_id: int
    layer_split: tuple[int, ...]


def _weights():
    # weights.py owns layer_split / padded_vocab_size so that the converters and the model can never
    # disagree on where a layer lives or how large the padded vocabulary is.
    from megatron_vrft.models.qwen2_5_vl import weights

    return weights


def _parallel_sizes(tp: Optional[int], pp: Optional[int]) -> tuple[int, int]:
    from megatron.core import parallel_state as ps

    if tp is None or pp is None:
        initialized = ps.model_parallel_is_initialized()
        if tp is None:
            tp = ps.get_tensor_model_parallel_world_size() if initialized else 1
        if pp is None:
            pp = ps.get_pipeline_model_parallel_world_size() if initialized else 1
    return tp, pp


def validate_parallelism(hf_config, tp: int, pp: int, first_stage_layers: Optional[int] = None) -> list[int]:
    """Checks that ``hf_config`` can be built and split TP x PP; returns the LLM layers per PP stage."""
    W = _weights()
    W.check_parallel_sizes(W.model_dims(hf_config), tp, pp, first_stage_layers)
    text, vision = hf_config.text_config, hf_config.vision_config
    for key, act in (("text_config.hidden_act", text.hidden_act), ("vision_config.hidden_act", vision.hidden_act)):
        if act not in _ACTIVATIONS:
            raise Qwen25VLConfigError(f"{key}={act!r} is not supported (supported: {sorted(_ACTIVATIONS)})")
    head_dim = vision.hidden_size // vision.num_heads
    if head_dim % 4 != 0:
        raise Qwen25VLConfigError(
            f"vision head dim {head_dim} (vision_config.hidden_size / num_heads) must be divisible by 4 "
            "for the 2-D rotary embedding"
        )
    bad = [i for i in vision.fullatt_block_indexes if not 0 <= i < vision.depth]
    if bad:
        raise Qwen25VLConfigError(
            f"vision_config.fullatt_block_indexes {bad} are outside 0..depth-1 (depth={vision.depth})"
        )
    return W.layer_split(text.num_hidden_layers, pp, first_stage_layers)


def _pipeline_layout(split: list[int]) -> Optional[list[list[str]]]:
    """mcore ``pipeline_model_parallel_layout`` for an arbitrary per-stage split (None for PP=1).

    The layout (rather than ``num_layers_in_first/last_pipeline_stage``) expresses any split,
    including uneven middle stages, and places the embedding on stage 0 and the loss on the last.
    """
    if len(split) == 1:
        return None
    layout = [["decoder"] * n for n in split]
    layout[0].insert(0, "embedding")
    layout[-1].append("loss")
    return layout


def mcore_configs(
    hf_config,
    *,
    tp: Optional[int] = None,
    pp: Optional[int] = None,
    first_stage_layers: Optional[int] = None,
    params_dtype: torch.dtype = torch.float32,
    sequence_parallel: bool = False,
    variable_seq_lengths: bool = False,
    perform_initialization: bool = True,
    use_cpu_initialization: Optional[bool] = None,
    **language_overrides: Any,
) -> Qwen25VLMcoreConfig:
    """Builds the three mcore configs for ``hf_config`` (a transformers ``Qwen2_5_VLConfig``).

    tp / pp default to the initialised mcore parallel state (1 when it is not initialised).
    ``first_stage_layers`` gives PP stage 0 (which also runs the ViT) fewer LLM layers.
    ``variable_seq_lengths`` (p2p shapes exchanged per micro-batch; needed when sequence lengths
    differ between micro-batches) sets ``moe_token_dispatcher_type="alltoall"``, which mcore 0.16.1
    requires even for dense models. ``language_overrides`` are extra ``TransformerConfig`` fields
    for the LLM (e.g. ``recompute_granularity``).
    """
    tp, pp = _parallel_sizes(tp, pp)
    split = validate_parallelism(hf_config, tp, pp, first_stage_layers)
    text, vision = hf_config.text_config, hf_config.vision_config
    if use_cpu_initialization is None:
        use_cpu_initialization = not torch.cuda.is_available()
    rope = text.rope_parameters or {}
    mrope_section = rope.get("mrope_section")
    head_dim = text.hidden_size // text.num_attention_heads
    if not mrope_section or 2 * sum(mrope_section) != head_dim:
        raise Qwen25VLConfigError(
            f"text_config.rope_parameters.mrope_section={mrope_section} must sum to head_dim/2={head_dim // 2}"
        )
    common = dict(
        normalization="RMSNorm",
        add_qkv_bias=True,
        gated_linear_unit=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        tensor_model_parallel_size=tp,
        use_cpu_initialization=use_cpu_initialization,
        perform_initialization=perform_initialization,
        # The fused kernels need transformer-engine / apex / CUDA extensions; the unfused paths are
        # what CPU and plain-torch GPU runs use (and what the parity tests check).
        apply_rope_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        rotary_interleaved=False,
    )
    dispatcher = {"variable_seq_lengths": True, "moe_token_dispatcher_type": "alltoall"} if variable_seq_lengths else {}
    language = TransformerConfig(
        **common,
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        num_attention_heads=text.num_attention_heads,
        num_query_groups=text.num_key_value_heads,
        kv_channels=head_dim,
        ffn_hidden_size=text.intermediate_size,
        layernorm_epsilon=text.rms_norm_eps,
        add_bias_linear=False,
        activation_func=_ACTIVATIONS[text.hidden_act],
        init_method_std=text.initializer_range,
        mrope_section=list(mrope_section),
        pipeline_model_parallel_size=pp,
        pipeline_model_parallel_layout=_pipeline_layout(split),
        sequence_parallel=sequence_parallel and tp > 1,
        **dispatcher,
        **language_overrides,
    )
    # The ViT lives whole on PP stage 0 and never uses sequence parallelism: its sequence is the
    # packed patches of all images/videos, attention is per window / frame.
    vision_cfg = TransformerConfig(
        **common,
        num_layers=vision.depth,
        hidden_size=vision.hidden_size,
        num_attention_heads=vision.num_heads,
        num_query_groups=vision.num_heads,
        kv_channels=vision.hidden_size // vision.num_heads,
        ffn_hidden_size=vision.intermediate_size,
        layernorm_epsilon=VISION_RMSNORM_EPS,
        add_bias_linear=True,
        activation_func=_ACTIVATIONS[vision.hidden_act],
        init_method_std=vision.initializer_range,
        pipeline_model_parallel_size=1,
        sequence_parallel=False,
    )
    merged = vision.hidden_size * vision.spatial_merge_size**2
    # Patch merger: Linear(merged, merged) -> GELU (exact) -> Linear(merged, out_hidden), not gated.
    projection = dataclasses.replace(
        vision_cfg,
        hidden_size=vision.out_hidden_size,
        ffn_hidden_size=merged,
        gated_linear_unit=False,
        activation_func=F.gelu,
    )
    vision_rope = vision.rope_parameters or {}
    padded = _weights().padded_vocab_size(text.vocab_size, tp)
    return Qwen25VLMcoreConfig(
        language=language,
        vision=vision_cfg,
        projection=projection,
        vision_spec=VisionSpec(
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            in_channels=vision.in_channels,
            spatial_merge_size=vision.spatial_merge_size,
            window_size=vision.window_size,
            fullatt_block_indexes=tuple(vision.fullatt_block_indexes),
            rope_theta=float(vision_rope.get("rope_theta", 10000.0)),
        ),
        vocab_size=text.vocab_size,
        padded_vocab_size=padded,
        rotary_base=int(rope.get("rope_theta", 1e6)),
        max_sequence_length=text.max_position_embeddings,
        tie_word_embeddings=bool(hf_config.tie_word_embeddings),
        image_token_id=hf_config.image_token_id,
        video_token_id=hf_config.video_token_id,
        layer_split=tuple(split),
    )

"""A small mcore GPTModel with Qwen2.5-VL's LLM features (RMSNorm, GQA, qkv bias, SwiGLU, mRoPE),
and one set of global weights that can be sharded to any TP/PP split.

The parallel-invariance tests train it at TP=1, TP=2, PP=2 and DP=2 from the *same* initial weights
(``global_weights(seed)`` sharded by ``shard_weights``) and compare the losses. Must run inside an
initialised mcore ``parallel_state`` (``megatron_vrft.runtime.init_distributed``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["TinyGPTShape", "build_tiny_gpt", "global_weights", "shard_weights"]


@dataclass(frozen=True)
class TinyGPTShape:
    layers: int = 4
    hidden: int = 64
    heads: int = 4
    groups: int = 2
    ffn: int = 128
    vocab: int = 96
    mrope_section: tuple[int, int, int] = (2, 3, 3)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def build_tiny_gpt(shape: TinyGPTShape = TinyGPTShape(), *, tied: bool = False):
    """This rank's stage of the GPTModel (local spec + SDPA core attention), fp32, CPU init."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_vrft.models.attention import SDPACoreAttention

    cfg = TransformerConfig(
        num_layers=shape.layers,
        hidden_size=shape.hidden,
        num_attention_heads=shape.heads,
        num_query_groups=shape.groups,
        ffn_hidden_size=shape.ffn,
        normalization="RMSNorm",
        layernorm_epsilon=1e-6,
        add_bias_linear=False,
        add_qkv_bias=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        mrope_section=list(shape.mrope_section),
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        pipeline_dtype=torch.float32,
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
    )
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return GPTModel(
        cfg,
        spec,
        vocab_size=shape.vocab,
        max_sequence_length=256,
        position_embedding_type="mrope",
        rotary_base=10000,
        share_embeddings_and_output_weights=tied,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )


def global_weights(shape: TinyGPTShape, seed: int = 0) -> dict[str, torch.Tensor]:
    """Unsharded weights keyed by *global* mcore names; QKV in mcore's per-group layout, gate/up kept
    apart (``...linear_fc1.gate`` / ``.up``) because mcore's fused fc1 layout depends on TP."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*size, scale=0.05):
        return torch.randn(*size, generator=g) * scale

    h, d = shape.hidden, shape.head_dim
    qkv_rows = (shape.heads + 2 * shape.groups) * d
    w = {"embedding.word_embeddings.weight": rnd(shape.vocab, h, scale=0.5)}
    for i in range(shape.layers):
        p = f"decoder.layers.{i}."
        w[p + "input_layernorm.weight"] = 1.0 + rnd(h)
        w[p + "self_attention.linear_qkv.weight"] = rnd(qkv_rows, h)
        w[p + "self_attention.linear_qkv.bias"] = rnd(qkv_rows)
        w[p + "self_attention.linear_proj.weight"] = rnd(h, h)
        w[p + "pre_mlp_layernorm.weight"] = 1.0 + rnd(h)
        w[p + "mlp.linear_fc1.gate"] = rnd(shape.ffn, h)
        w[p + "mlp.linear_fc1.up"] = rnd(shape.ffn, h)
        w[p + "mlp.linear_fc2.weight"] = rnd(h, shape.ffn)
    w["decoder.final_layernorm.weight"] = 1.0 + rnd(h)
    w["output_layer.weight"] = rnd(shape.vocab, h, scale=0.2)
    return w


def shard_weights(weights: dict[str, torch.Tensor], shape: TinyGPTShape) -> dict[str, torch.Tensor]:
    """This rank's local state dict (local layer numbers) under the current mcore parallel state."""
    from megatron.core import parallel_state as ps

    tp, r = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    pp, s = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    per_stage = shape.layers // pp
    first, last = s * per_stage, (s + 1) * per_stage

    def col(t):
        return t.chunk(tp, 0)[r]

    def row(t):
        return t.chunk(tp, 1)[r]

    out: dict[str, torch.Tensor] = {}
    if s == 0:
        out["embedding.word_embeddings.weight"] = col(weights["embedding.word_embeddings.weight"])
    if s == pp - 1:
        out["decoder.final_layernorm.weight"] = weights["decoder.final_layernorm.weight"]
        out["output_layer.weight"] = col(weights["output_layer.weight"])
    for i in range(first, last):
        gp, lp = f"decoder.layers.{i}.", f"decoder.layers.{i - first}."
        out[lp + "input_layernorm.weight"] = weights[gp + "input_layernorm.weight"]
        out[lp + "pre_mlp_layernorm.weight"] = weights[gp + "pre_mlp_layernorm.weight"]
        out[lp + "self_attention.linear_qkv.weight"] = col(weights[gp + "self_attention.linear_qkv.weight"])
        out[lp + "self_attention.linear_qkv.bias"] = col(weights[gp + "self_attention.linear_qkv.bias"])
        out[lp + "self_attention.linear_proj.weight"] = row(weights[gp + "self_attention.linear_proj.weight"])
        out[lp + "mlp.linear_fc1.weight"] = torch.cat(
            [col(weights[gp + "mlp.linear_fc1.gate"]), col(weights[gp + "mlp.linear_fc1.up"])]
        )
        out[lp + "mlp.linear_fc2.weight"] = row(weights[gp + "mlp.linear_fc2.weight"])
    return out

"""HF config -> mcore configs: the values that must carry over, and one clear error per bad split."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from megatron_vrft.models.qwen2_5_vl import weights as W
from megatron_vrft.models.qwen2_5_vl.config import Qwen25VLConfigError, mcore_configs
from megatron_vrft.testing.tiny_qwen import tiny_hf_config


def test_configs_carry_hf_values():
    hf = tiny_hf_config(tie_word_embeddings=True, text={"rms_norm_eps": 1e-5})
    c = mcore_configs(hf, tp=2, pp=2, first_stage_layers=2)
    lm, vit, proj = c.language, c.vision, c.projection
    assert (lm.num_layers, lm.hidden_size, lm.num_attention_heads, lm.num_query_groups) == (3, 64, 4, 2)
    assert (lm.kv_channels, lm.ffn_hidden_size, lm.layernorm_epsilon) == (16, 96, 1e-5)
    assert lm.add_qkv_bias and not lm.add_bias_linear and lm.gated_linear_unit and lm.mrope_section == [2, 3, 3]
    # vision norms are always eps 1e-6 (HF hard-codes it), whatever the text eps
    assert vit.layernorm_epsilon == 1e-6 and vit.add_bias_linear and vit.gated_linear_unit
    assert (vit.num_layers, vit.hidden_size, vit.kv_channels, vit.ffn_hidden_size) == (3, 32, 16, 48)
    assert vit.pipeline_model_parallel_size == 1
    # merger: 4 patches of 32 -> Linear(128, 128) -> exact GELU -> Linear(128, 64), not gated
    assert (proj.hidden_size, proj.ffn_hidden_size, proj.gated_linear_unit) == (64, 128, False)
    assert proj.activation_func is F.gelu
    assert (c.vocab_size, c.padded_vocab_size, c.tie_word_embeddings) == (129, 130, True)
    assert c.rotary_base == 1_000_000 and c.vision_spec.rope_theta == 10000.0
    assert c.layer_split == (2, 1)
    assert c.vision_spec.fullatt_block_indexes == (1,) and c.vision_spec.patch_dim == 3 * 2 * 14 * 14


_WIDE_TEXT = {  # 12 heads of 8, 4 KV heads: lets TP be 4, 6 or 12
    "hidden_size": 96,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "intermediate_size": 96,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]},
}
_WIDE_VISION = {"num_heads": 4, "intermediate_size": 48}


_TP6_VISION = {"num_heads": 12, "intermediate_size": 48, "hidden_size": 48}  # lets the ViT split at TP 6


@pytest.mark.parametrize(
    "overrides,tp,pp,kw,message",
    [
        ({}, 3, 1, {}, "tensor-parallel size 3 does not divide text_config.num_attention_heads=4"),
        ({"text": _WIDE_TEXT, "vision": _TP6_VISION}, 6, 1, {},
         "tensor-parallel size 6 neither divides nor is a multiple of text_config.num_key_value_heads=4"),
        ({"text": {"num_key_value_heads": 4}}, 4, 1, {},
         "tensor-parallel size 4 does not divide vision_config.num_heads=2"),
        ({"text": _WIDE_TEXT, "vision": {"num_heads": 4, "intermediate_size": 50}}, 4, 1, {},
         "tensor-parallel size 4 does not divide vision_config.intermediate_size=50"),
        ({}, 1, 2, {"first_stage_layers": 3}, r"first_stage_layers=3 must be in \[1, 2\]"),
        ({}, 1, 4, {}, "cannot split text_config.num_hidden_layers=3 into pp=4 stages"),
        ({}, 0, 1, {}, "tensor-parallel size must be >= 1, got 0"),
    ],
)
def test_bad_parallel_split_is_one_clear_error(overrides, tp, pp, kw, message):
    """The model's checks are the converters' (``weights.check_parallel_sizes``): same error class,
    same message, so a TP/PP choice is judged once."""
    hf = tiny_hf_config(**overrides)
    with pytest.raises(W.ParallelSizeError, match=message):
        mcore_configs(hf, tp=tp, pp=pp, **kw)
    with pytest.raises(W.ParallelSizeError, match=message):
        W.check_parallel_sizes(W.model_dims(hf), tp, pp, kw.get("first_stage_layers"))


def test_other_config_errors_name_the_key():
    with pytest.raises(Qwen25VLConfigError, match=r"text_config.hidden_act='relu' is not supported"):
        mcore_configs(tiny_hf_config(text={"hidden_act": "relu"}), tp=1, pp=1)
    with pytest.raises(Qwen25VLConfigError, match=r"fullatt_block_indexes \[5\] are outside 0..depth-1"):
        mcore_configs(tiny_hf_config(vision={"fullatt_block_indexes": [5]}), tp=1, pp=1)


def test_tp_above_kv_heads_is_allowed():
    # mcore 0.16 replicates KV groups when TP is a multiple of num_key_value_heads (12 heads / TP 12)
    hf = tiny_hf_config(text=_WIDE_TEXT, vision={"num_heads": 12, "intermediate_size": 48, "hidden_size": 48})
    c = mcore_configs(hf, tp=12, pp=1)
    assert (c.language.num_query_groups, c.language.tensor_model_parallel_size) == (4, 12)


def test_variable_seq_lengths_sets_the_dispatcher_mcore_requires():
    # mcore 0.16.1 rejects variable_seq_lengths=True unless moe_token_dispatcher_type="alltoall",
    # even for a dense model
    lm = mcore_configs(tiny_hf_config(), tp=1, pp=1, variable_seq_lengths=True).language
    assert lm.variable_seq_lengths and lm.moe_token_dispatcher_type == "alltoall"

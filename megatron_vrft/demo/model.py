"""The demo's tiny Qwen2.5-VL (random, HF format) with the byte-level tiny tokenizer saved beside it.

Shape (found by experiment: it learns the demo task in ~60 SFT steps, batch 8, lr 1e-3):
language model 2 layers, hidden 128, 4 heads of 32 (GQA, 2 KV heads), MLP 256, mRoPE section
[4, 6, 6]; vision 2 blocks (block 1 full attention), hidden 64, 2 heads of 32, MLP 128, patch 14,
merge 2; ~0.62 M parameters. Head size 32 is the smallest vLLM's CPU attention kernels accept, so
the same directory serves the HF and the vLLM rollout engines. Initialisation is HF's own
(``initializer_range`` 0.02), from ``seed``.

    hf_dir = write_demo_model("outputs/demo/hf", seed=0)
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_vrft.data.template import VisionTokenIds
from megatron_vrft.data.testing import build_tiny_tokenizer, vocab_size_of
from megatron_vrft.testing.tiny_qwen import tiny_hf_config

TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.02,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]})
VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, fullatt_block_indexes=[1],
              initializer_range=0.02)


def demo_hf_config(tokenizer):
    """The demo model's ``Qwen2_5_VLConfig``, with the tokenizer's vocabulary and special-token ids."""
    ids = VisionTokenIds.from_tokenizer(tokenizer)
    cfg = tiny_hf_config(text={**TEXT, "vocab_size": vocab_size_of(tokenizer), "bos_token_id": ids.im_start,
                               "eos_token_id": ids.im_end, "pad_token_id": ids.pad}, vision=VISION)
    cfg.image_token_id, cfg.video_token_id = ids.image_pad, ids.video_pad
    cfg.vision_start_token_id, cfg.vision_end_token_id = ids.vision_start, ids.vision_end
    return cfg


def write_demo_model(out: str | Path, seed: int = 0) -> Path:
    """Writes config.json, safetensors and the tokenizer files to ``out``; returns ``out``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = Path(out)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(demo_hf_config(tokenizer)).float()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out

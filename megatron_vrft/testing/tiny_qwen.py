"""Tiny random Qwen2.5-VL models (transformers ``Qwen2_5_VLForConditionalGeneration``) built in code,
and matching text + image + video inputs, for parity tests, converter tests and benchmarks.

Nothing is downloaded: the config is written here and the weights are random (seeded). The shapes
keep every feature that matters for parity with the mcore model: GQA (``num_key_value_heads`` 1 or
> 1), qkv bias, mRoPE with a non-trivial ``mrope_section``, tied or untied embeddings, a vocabulary
that TP=2 has to pad (odd size), >= 2 vision blocks with one full-attention block, and a window
(``window_size``) smaller than the test images, so that window attention, the window permutation
and empty windows are all exercised.

    cfg = tiny_hf_config(tie_word_embeddings=True, text={"num_key_value_heads": 1})
    model = tiny_hf_model(seed=0, tie_word_embeddings=True)
    batch = tiny_vl_batch(cfg)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TINY_SHAPES",
    "IMAGE_TOKEN_ID",
    "VIDEO_TOKEN_ID",
    "tiny_hf_config",
    "tiny_hf_model",
    "save_tiny_hf",
    "tiny_vl_batch",
    "ROLLOUT_SHAPES",
    "save_tiny_rollout_dir",
    "save_rollout_dir",
]

# Token ids of the tiny vocabulary (they must be < vocab_size).
IMAGE_TOKEN_ID = 100
VIDEO_TOKEN_ID = 101
VISION_START_TOKEN_ID = 102
VISION_END_TOKEN_ID = 103

_TEXT = dict(
    vocab_size=129,  # odd: TP=2 pads it to 130
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=512,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    hidden_act="silu",
    initializer_range=0.05,  # larger than HF's 0.02 so that a mapping error moves the outputs visibly
    bos_token_id=104,
    eos_token_id=105,
)
_VISION = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=48,
    num_heads=2,
    out_hidden_size=64,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    # 56 px = 2x2 merged tokens per window, smaller than the test images (see tiny_vl_batch)
    window_size=56,
    fullatt_block_indexes=[1],
    tokens_per_second=2,
    hidden_act="silu",
    initializer_range=0.05,
)

# Named shapes used by the parity tests: overrides for tiny_hf_config.
TINY_SHAPES: dict[str, dict[str, Any]] = {
    "untied_gqa": {},
    "tied_mqa": {
        "tie_word_embeddings": True,
        "text": {"num_key_value_heads": 1, "vocab_size": 128, "num_hidden_layers": 2},
        "vision": {"depth": 2, "fullatt_block_indexes": [0]},
    },
}

# Shapes for the rollout engines, kept out of TINY_SHAPES (whose tests use the tiny 129-token
# vocabulary and the ids above). vLLM's CPU attention kernels need head_dim in {32, 64, 80, ...}:
# 128 hidden / 4 heads = 32, mrope_section sums to head_dim / 2. The vocabulary and special ids are
# those of `data.testing.build_tiny_tokenizer()` (256 bytes, then Qwen's 14 specials at 256..269),
# so vLLM can load the tokenizer next to the model and the data pipeline's token ids are the model's.
ROLLOUT_SHAPES: dict[str, dict[str, Any]] = {
    "vllm": {
        "text": {"vocab_size": 270, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
                 "bos_token_id": 256, "eos_token_id": 258,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}},
        "vision": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "fullatt_block_indexes": [1]},
        "image_token_id": 268, "video_token_id": 269, "vision_start_token_id": 265, "vision_end_token_id": 266,
        "bos_token_id": 256, "eos_token_id": 258,
    },
}


def tiny_hf_config(*, tie_word_embeddings: bool = False, text: dict | None = None, vision: dict | None = None, **top):
    """A small ``Qwen2_5_VLConfig`` (fp32, eager attention).

    ``text`` / ``vision`` override keys of the text / vision sub-configs; other keyword arguments
    override top-level keys. ``out_hidden_size`` follows the text ``hidden_size`` unless given.
    """
    from transformers import Qwen2_5_VLConfig

    text_cfg = {**copy.deepcopy(_TEXT), **(text or {})}
    vision_cfg = {**copy.deepcopy(_VISION), "out_hidden_size": text_cfg["hidden_size"], **(vision or {})}
    token_ids = dict(image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID,
                     vision_start_token_id=VISION_START_TOKEN_ID, vision_end_token_id=VISION_END_TOKEN_ID)
    cfg = Qwen2_5_VLConfig(
        text_config=text_cfg,
        vision_config=vision_cfg,
        tie_word_embeddings=tie_word_embeddings,
        **{**token_ids, **top},
    )
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = "eager"
    return cfg


def tiny_hf_model(seed: int = 0, **overrides):
    """A random ``Qwen2_5_VLForConditionalGeneration`` (fp32, eval mode) for ``tiny_hf_config(**overrides)``.

    RMSNorm weights are drawn around 1 and biases are random too, so that a wrong norm or bias
    mapping cannot hide behind HF's all-ones / all-zeros initialisation.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = tiny_hf_config(**overrides)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def save_tiny_hf(directory: str | Path, seed: int = 0, **overrides):
    """Writes a tiny model (``config.json`` + safetensors) with ``save_pretrained``; returns the model."""
    model = tiny_hf_model(seed=seed, **overrides)
    model.save_pretrained(str(directory), safe_serialization=True)
    return model


def _vision_run(token_id: int, grid: tuple[int, int, int], merge: int) -> list[int]:
    t, h, w = grid
    return [VISION_START_TOKEN_ID] + [token_id] * (t * h * w // merge**2) + [VISION_END_TOKEN_ID]


def tiny_vl_batch(config, seed: int = 0, second_per_grid_t: float = 1.5) -> dict[str, torch.Tensor]:
    """Two samples of text + media, right-padded with text tokens to one length.

    Sample 0: text, a 56x84 px image (grid 1x4x6), text, a 4-frame 56x56 px video (grid 2x4x4), text.
    Sample 1: text, a 56x56 px image (grid 1x4x4), text.
    Returns HF-style inputs: ``input_ids`` [2, S], ``mm_token_type_ids`` [2, S] (0 text, 1 image,
    2 video), ``pixel_values`` [Σ t·h·w, C·Tp·P·P], ``image_grid_thw`` [2, 3], ``pixel_values_videos``,
    ``video_grid_thw`` [1, 3], ``second_per_grid_ts`` [1]. Pixels are random normal (HF's processor
    output is normalised the same way), token ids avoid the special ids.
    """
    vc = config.vision_config
    merge = vc.spatial_merge_size
    gen = torch.Generator().manual_seed(seed)
    n_text = config.text_config.vocab_size

    def text(n: int) -> list[int]:
        return torch.randint(0, min(IMAGE_TOKEN_ID, n_text), (n,), generator=gen).tolist()

    img_grids = [(1, 4, 6), (1, 4, 4)]
    vid_grids = [(2, 4, 4)]
    s0 = text(5) + _vision_run(IMAGE_TOKEN_ID, img_grids[0], merge) + text(4)
    s0 += _vision_run(VIDEO_TOKEN_ID, vid_grids[0], merge) + text(3)
    s1 = text(3) + _vision_run(IMAGE_TOKEN_ID, img_grids[1], merge) + text(6)
    s1 += text(len(s0) - len(s1))
    input_ids = torch.tensor([s0, s1])
    mm = torch.zeros_like(input_ids)
    mm[input_ids == IMAGE_TOKEN_ID] = 1
    mm[input_ids == VIDEO_TOKEN_ID] = 2
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    n_img = sum(t * h * w for t, h, w in img_grids)
    n_vid = sum(t * h * w for t, h, w in vid_grids)
    return {
        "input_ids": input_ids,
        "mm_token_type_ids": mm,
        "pixel_values": torch.randn(n_img, patch_dim, generator=gen),
        "image_grid_thw": torch.tensor(img_grids),
        "pixel_values_videos": torch.randn(n_vid, patch_dim, generator=gen),
        "video_grid_thw": torch.tensor(vid_grids),
        "second_per_grid_ts": torch.tensor([second_per_grid_t] * len(vid_grids)),
    }


def save_tiny_rollout_dir(directory: str | Path, seed: int = 0, shape: str = "vllm"):
    """A complete HF model directory a rollout engine (vLLM) can load: model (``ROLLOUT_SHAPES[shape]``,
    safetensors), the tiny byte-level tokenizer with Qwen's chat template, ``generation_config.json``
    (EOS = ``<|im_end|>``) and image/video processor configs. Returns the HF model (fp32, eval)."""

    model = tiny_hf_model(seed=seed, **ROLLOUT_SHAPES[shape])
    save_rollout_dir(directory, model)
    return model


def save_rollout_dir(directory: str | Path, model) -> None:
    """Writes ``model`` (an HF Qwen2.5-VL whose special ids are the tiny tokenizer's) with the files
    vLLM needs next to it: tokenizer, ``generation_config.json``, image/video processor configs."""
    import json

    from megatron_vrft.data.testing import build_tiny_tokenizer

    directory = Path(directory)
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    model.generation_config.bos_token_id = model.config.text_config.bos_token_id
    model.save_pretrained(str(directory), safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(str(directory))
    norm = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
                rescale_factor=1 / 255, do_convert_rgb=True, do_normalize=True, do_rescale=True, do_resize=True,
                patch_size=14, temporal_patch_size=2, merge_size=2, processor_class="Qwen2_5_VLProcessor",
                min_pixels=56 * 56, max_pixels=28 * 28 * 1280,
                size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})
    (directory / "preprocessor_config.json").write_text(
        json.dumps({**norm, "image_processor_type": "Qwen2VLImageProcessor"}, indent=2))
    (directory / "video_preprocessor_config.json").write_text(
        json.dumps({**norm, "video_processor_type": "Qwen2VLVideoProcessor", "do_sample_frames": False}, indent=2))

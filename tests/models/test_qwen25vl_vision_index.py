"""The ViT's index tensors (window permutation, window / frame ``cu_seqlens``, 2-D RoPE angles) vs
transformers' own helpers, on grids that hit the edge cases: a grid that is an exact multiple of the
window (HF pads a whole row/column of empty windows), a non-multiple grid, several frames, and several
items in one call. Plus hand-computed values for one tiny case."""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionRotaryEmbedding
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

from megatron_vrft.models.qwen2_5_vl.vision import frame_cu_seqlens, vision_rope_angles, window_index
from megatron_vrft.testing.tiny_qwen import tiny_hf_config

GRIDS = [
    [[1, 4, 6]],  # merged 2x3 with 2x2 windows: windows of 4 and 2 tokens + empty ones
    [[1, 4, 4]],  # merged 2x2 = exactly one window: HF adds 3 empty windows
    [[2, 8, 12], [3, 4, 4], [1, 6, 10]],  # several items, frames, odd merged sizes
]


@pytest.mark.parametrize("grid", GRIDS)
def test_window_index_and_cu_seqlens_match_hf(grid):
    g = torch.tensor(grid)
    merge, window, patch = 2, 56, 14
    ours_idx, ours_cu = window_index(g, merge, window, patch)
    hf_idx, hf_cu = get_vision_window_index(g, spatial_merge_size=merge, window_size=window, patch_size=patch)
    assert torch.equal(ours_idx, hf_idx)
    assert torch.equal(ours_cu, hf_cu) and ours_cu.dtype == torch.int32
    assert sorted(ours_idx.tolist()) == list(range(int(g.prod(-1).sum()) // 4))  # a permutation
    cfg = tiny_hf_config().vision_config
    hf_full, _ = get_vision_attention_seqlens(g, cfg)
    assert torch.equal(frame_cu_seqlens(g), hf_full.to(torch.int32))


def test_window_index_hand_computed():
    # 1 frame, 4x6 patches -> merged 2x3; windows of 2x2 merged tokens: [0,1,3,4] and [2,5]
    idx, cu = window_index(torch.tensor([[1, 4, 6]]), 2, 56, 14)
    assert idx.tolist() == [0, 1, 3, 4, 2, 5]
    assert cu.tolist() == [0, 16, 24]  # patches (x4): 4 and 2 merged tokens
    assert frame_cu_seqlens(torch.tensor([[2, 2, 4], [1, 2, 2]])).tolist() == [0, 8, 16, 20]


@pytest.mark.parametrize("grid", GRIDS)
def test_rope_angles_match_hf(grid):
    g = torch.tensor(grid)
    cfg = tiny_hf_config().vision_config
    head_dim = cfg.hidden_size // cfg.num_heads
    angles = vision_rope_angles(g, head_dim, cfg.spatial_merge_size, cfg.rope_parameters["rope_theta"])
    cos, sin = Qwen2_5_VLVisionRotaryEmbedding(cfg)(torch.zeros(1), get_vision_position_ids(g, cfg.spatial_merge_size))
    assert angles.shape == (int(g.prod(-1).sum()), head_dim)
    torch.testing.assert_close(angles.cos(), cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(angles.sin(), sin, rtol=0, atol=1e-6)

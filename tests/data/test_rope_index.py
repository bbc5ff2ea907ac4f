"""mRoPE position ids: parity with transformers 5.23 `get_rope_index` and hand-computed values."""

import pytest
import torch
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

from megatron_vrft.models.qwen2_5_vl.rope_index import (
    RopeIndexConfig,
    RopeIndexError,
    extend_positions,
    get_rope_index,
)

IMG, VID, VS, VE = 151655, 151656, 151652, 151653


def _hf_config(tokens_per_second=2):
    return Qwen2_5_VLConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=64, vocab_size=151936, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=32,
                           spatial_merge_size=2, tokens_per_second=tokens_per_second),
    )


class _HFRope:
    """Calls transformers' own method without building the model's weights."""

    get_rope_index = Qwen2_5_VLModel.get_rope_index
    get_vision_position_ids = Qwen2_5_VLModel.get_vision_position_ids

    def __init__(self, config):
        self.config = config


def _hf_positions(cfg, ids, image_grid=None, video_grid=None, seconds=None):
    ids = torch.tensor([ids])
    mm = torch.zeros_like(ids)
    mm[ids == IMG] = 1
    mm[ids == VID] = 2
    pos, delta = _HFRope(cfg).get_rope_index(
        ids, mm_token_type_ids=mm,
        image_grid_thw=None if image_grid is None else torch.tensor(image_grid),
        video_grid_thw=None if video_grid is None else torch.tensor(video_grid),
        second_per_grid_ts=None if seconds is None else torch.tensor(seconds, dtype=torch.float32),
    )
    return pos[:, 0], int(delta)


def _seq(*parts):
    """parts: ints (text token runs of that many tokens) or ('img'|'vid', t, h, w)."""
    ids, text_tok = [], 10
    for p in parts:
        if isinstance(p, int):
            ids += list(range(text_tok, text_tok + p))
            text_tok += p
        else:
            kind, t, h, w = p
            ids += [VS] + [IMG if kind == "img" else VID] * (t * h * w // 4) + [VE]
    return ids


CASES = [
    # (parts, image grids, video grids, second_per_grid_ts)
    ((5, ("img", 1, 4, 6), 3), [[1, 4, 6]], None, None),
    ((4, ("vid", 2, 4, 4), 2), None, [[2, 4, 4]], [1.0]),
    ((3, ("img", 1, 2, 2), 2, ("vid", 3, 4, 2), 1, ("vid", 4, 2, 2), 6), [[1, 2, 2]], [[3, 4, 2], [4, 2, 2]], [0.5, 2 / 3]),
    ((2, ("vid", 6, 6, 4), 4, ("img", 1, 6, 4), 3), [[1, 6, 4]], [[6, 6, 4]], [0.25]),
    ((1, ("vid", 5, 4, 4), 2), None, [[5, 4, 4]], [4 / 3]),
]


@pytest.mark.parametrize("tps", [2, 4])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_hf_5_23_mode_equals_transformers(case, tps):
    parts, ig, vg, secs = CASES[case]
    cfg = _hf_config(tps)
    ids = _seq(*parts)
    want, want_delta = _hf_positions(cfg, ids, ig, vg, secs)
    got, delta = get_rope_index(torch.tensor(ids), RopeIndexConfig.from_hf_config(cfg, mode="hf_5_23"), ig, vg, secs)
    assert torch.equal(got, want)
    assert delta == want_delta


def test_qwen_mode_hand_computed():
    # 2 text tokens, a video with grid (t=3, h=4, w=4) -> 3*2*2 = 12 tokens, 1 text token.
    # second_per_grid_t = 2 s, tokens_per_second = 2 -> temporal stride 4.
    ids = [10, 11] + [VID] * 12 + [12]
    cfg = RopeIndexConfig(tokens_per_second=2, mode="qwen")
    pos, delta = get_rope_index(torch.tensor(ids), cfg, video_grid_thw=[[3, 4, 4]], second_per_grid_ts=[2.0])
    t = [0, 1] + [2] * 4 + [6] * 4 + [10] * 4 + [11]
    h = [0, 1] + [2, 2, 3, 3] * 3 + [11]
    w = [0, 1] + [2, 3, 2, 3] * 3 + [11]
    assert pos.tolist() == [t, h, w]
    assert delta == 12 - 15
    # transformers 5.23 continues text at start + max(h, w)/merge = 2 + 2 = 4 instead of max + 1 = 11.
    hf_pos, _ = get_rope_index(torch.tensor(ids), RopeIndexConfig(tokens_per_second=2, mode="hf_5_23"),
                               video_grid_thw=[[3, 4, 4]], second_per_grid_ts=[2.0])
    assert hf_pos[:, -1].tolist() == [4, 4, 4]
    assert torch.equal(hf_pos[:, :-1], pos[:, :-1])


@pytest.mark.parametrize("parts,ig,vg,secs", [
    CASES[0],
    # temporal extent (t-1)*stride = 1 stays below the spatial extent 4/2 = 2
    ((4, ("vid", 2, 4, 4), 2), None, [[2, 4, 4]], [0.5]),
])
def test_modes_agree_for_images_and_short_videos(parts, ig, vg, secs):
    ids = torch.tensor(_seq(*parts))
    a, _ = get_rope_index(ids, RopeIndexConfig(mode="qwen"), ig, vg, secs)
    b, _ = get_rope_index(ids, RopeIndexConfig(mode="hf_5_23"), ig, vg, secs)
    assert torch.equal(a, b)


def test_fractional_interval_is_truncated_after_scaling():
    # 4 fps -> second_per_grid_t = 0.5; with tps=2 the stride is 1: [0, 1, 2, 3], not [0, 0, 0, 0].
    ids = [VID] * 4
    pos, _ = get_rope_index(torch.tensor(ids), RopeIndexConfig(), video_grid_thw=[[4, 2, 2]], second_per_grid_ts=[0.5])
    assert pos[0].tolist() == [0, 1, 2, 3]
    # stride 0.75 -> floor(k * 0.75) = [0, 0, 1, 2]
    pos, _ = get_rope_index(torch.tensor(ids), RopeIndexConfig(tokens_per_second=1.5), video_grid_thw=[[4, 2, 2]],
                            second_per_grid_ts=[0.5])
    assert pos[0].tolist() == [0, 0, 1, 2]


def test_adjacent_images_are_split_by_grid():
    ids = [IMG] * 4 + [IMG] * 1 + [7]
    pos, _ = get_rope_index(torch.tensor(ids), RopeIndexConfig(), image_grid_thw=[[1, 4, 4], [1, 2, 2]])
    assert pos.tolist() == [[0, 0, 0, 0, 2, 3], [0, 0, 1, 1, 2, 3], [0, 1, 0, 1, 2, 3]]


def test_text_only_and_extension():
    pos, delta = get_rope_index(torch.tensor([5, 6, 7]), RopeIndexConfig())
    assert pos.tolist() == [[0, 1, 2]] * 3 and delta == 0
    ids = [10] + [VID] * 12 + [11]
    pos, _ = get_rope_index(torch.tensor(ids), RopeIndexConfig(), video_grid_thw=[[3, 4, 4]], second_per_grid_ts=[2.0])
    ext = extend_positions(pos, 2)
    assert ext.shape == (3, 16)
    assert ext[:, -2:].tolist() == [[11, 12]] * 3
    # completion tokens continue where a full recomputation over prompt + completion puts them
    full, _ = get_rope_index(torch.tensor(ids + [12, 13]), RopeIndexConfig(), video_grid_thw=[[3, 4, 4]],
                             second_per_grid_ts=[2.0])
    assert torch.equal(ext, full)


@pytest.mark.parametrize("ids,grid,msg", [
    ([VID] * 3, [[1, 4, 4]], "needs 4 consecutive"),
    ([VID] * 4 + [1] + [VID] * 4, [[1, 4, 4]], "more video pad runs"),
    ([1, 2], [[1, 4, 4]], "has 1 rows but input_ids hold 0"),
])
def test_mismatch_errors(ids, grid, msg):
    with pytest.raises(RopeIndexError, match=msg):
        get_rope_index(torch.tensor(ids), RopeIndexConfig(), video_grid_thw=grid)

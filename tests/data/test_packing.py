"""Packing: labels/loss mask/cu_seqlens on hand-built sequences, per-sample positions kept,
micro-batch plans, and encode_sample on real decoded synthetic samples."""

from __future__ import annotations

import pytest
import torch
from _synthetic import SMALL_IMAGE, SMALL_VIDEO, dataset

from megatron_vrft.data import load_samples
from megatron_vrft.data.packing import (
    PackingError,
    SequenceItem,
    encode_sample,
    grpo_item,
    pack,
    pack_items,
    plan_micro_batches,
)
from megatron_vrft.data.template import VisionTokenIds
from megatron_vrft.data.testing import build_tiny_tokenizer
from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig

PAD = 0


def _item(name, ids, targets, start=0):
    ids = torch.tensor(ids)
    return SequenceItem(name, ids, torch.tensor(targets, dtype=torch.bool),
                        torch.arange(start, start + len(ids)).expand(3, -1).clone())


def test_pack_labels_mask_and_boundaries():
    a = _item("a", [11, 12, 13, 14], [0, 0, 1, 1])
    b = _item("b", [21, 22, 23], [0, 1, 1], start=5)
    batch = pack([a, b], PAD, pad_to_multiple_of=4)
    assert batch.input_ids.tolist() == [[11, 12, 13, 14, 21, 22, 23, PAD]]
    # labels[i] = next token within the sample; the last token of each sample points at pad
    assert batch.labels.tolist() == [[12, 13, 14, PAD, 22, 23, PAD, PAD]]
    # loss at i when token i+1 is a target; zero at sample ends and on padding
    assert batch.loss_mask.tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    assert batch.cu_seqlens.dtype == torch.int32 and batch.cu_seqlens.tolist() == [0, 4, 7, 8]
    assert batch.max_seqlen == 4 and batch.num_padding == 1 and batch.seq_lens == [4, 3]
    # positions are the items' own, not recomputed over the packed row
    assert batch.position_ids.shape == (3, 1, 8)
    assert batch.position_ids[0, 0].tolist() == [0, 1, 2, 3, 5, 6, 7, 0]
    assert [s for s in batch.sample_slices()] == [slice(0, 4), slice(4, 7)]


@pytest.mark.parametrize("lengths,method,expected", [
    ([3, 4, 6, 2, 5, 1], "greedy", [[0, 1], [2, 3], [4, 5]]),
    # first-fit decreasing: 6->b0, 5->b1, 4->b2, 3->b1 (b0 has 2 left), 2->b0, 1->b2
    ([3, 4, 6, 2, 5, 1], "first_fit", [[2, 3], [0, 4], [1, 5]]),
    ([5, 4, 4, 3], "greedy", [[0], [1, 2], [3]]),
    ([5, 4, 4, 3], "first_fit", [[0, 3], [1, 2]]),
])
def test_plan_micro_batches(lengths, method, expected):
    plan = plan_micro_batches(lengths, 8, method)
    assert plan == expected
    assert all(sum(lengths[i] for i in group) <= 8 for group in plan)
    assert sorted(i for g in plan for i in g) == list(range(len(lengths)))


def test_plan_rejects_overlong_and_unknown():
    with pytest.raises(PackingError, match="sequence 1 has 9 tokens"):
        plan_micro_batches([3, 9], 8)
    with pytest.raises(PackingError, match="unknown packing method"):
        plan_micro_batches([3], 8, "best_fit")


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _video_positions(n: int, start: int) -> torch.Tensor:
    """Hand-computed mRoPE ids [3, n] of a sequence whose one video (grid 2x4x4 patches = 2x2x2
    tokens after the 2x2 merge, 2 s per temporal patch) starts at token ``start``: text counts up on
    all three axes; video token (t, h, w) sits at start + (t * 2 tokens/s * 2 s, h, w); the text after
    it resumes at the largest video id + 1 = start + 4 + 1."""
    want = torch.empty(3, n, dtype=torch.long)
    want[:, :start] = torch.arange(start)
    for k, (t, h, w) in enumerate((t, h, w) for t in range(2) for h in range(2) for w in range(2)):
        want[:, start + k] = torch.tensor([start + 4 * t, start + h, start + w])
    want[:, start + 8 :] = torch.arange(start + 5, start + 5 + n - start - 8)
    return want


def test_encode_decoded_video_sample(tok):
    d = dataset("llava_conv", "sft")
    samples, _ = load_samples(d["path"], "llava_conv", d["media_root"], video_options=SMALL_VIDEO)
    sample = samples[2].with_visuals()
    vis = sample.visuals[0]
    assert vis.frames.shape == (4, 3, 56, 56) and vis.grid_thw.tolist() == [2, 4, 4]
    assert vis.pixel_values.shape == (2 * 4 * 4, 1176)
    # 32 frames at 8 fps, 4 sampled -> sample_fps = 4/32*8 = 1 -> 2/sample_fps = 2 s per temporal patch
    assert vis.second_per_grid_t == pytest.approx(2.0)
    ids = VisionTokenIds.from_tokenizer(tok)
    rope = RopeIndexConfig(image_token_id=ids.image_pad, video_token_id=ids.video_pad)
    item = encode_sample(sample, tok, rope)
    assert int((item.input_ids == ids.video_pad).sum()) == 2 * 4 * 4 // 4
    assert tok.decode(item.input_ids[item.target_mask]) == sample.target + "<|im_end|>"
    vid = item.input_ids == ids.video_pad
    start = int(vid.nonzero()[0])
    assert vid[start : start + 8].all() and int(vid.sum()) == 8
    assert torch.equal(item.position_ids, _video_positions(len(item.input_ids), start))
    # GRPO: prompt item + completion continues positions at max + 1, as a full recomputation does
    prompt = encode_sample(sample, tok, rope, prompt_only=True)
    completion = tok("<answer>normal</answer>", add_special_tokens=False)["input_ids"] + [ids.im_end]
    seq = grpo_item(prompt, completion)
    assert torch.equal(seq.position_ids, _video_positions(len(seq.input_ids), start))
    assert seq.target_mask.sum() == len(completion) and seq.prompt_len == len(prompt)


def test_pack_items_concatenates_vision_in_sample_order(tok):
    d = dataset("robo2vlm_mcq", "sft")
    samples, _ = load_samples(d["path"], "robo2vlm_mcq", image_options=SMALL_IMAGE, limit=3)
    ids = VisionTokenIds.from_tokenizer(tok)
    rope = RopeIndexConfig(image_token_id=ids.image_pad, video_token_id=ids.video_pad)
    items = [encode_sample(s.with_visuals(), tok, rope) for s in samples]
    budget = len(items[0]) + len(items[1])
    batches = pack_items(items, budget, ids.pad)
    assert [b.sample_ids for b in batches] == [[s.id for s in samples[:2]], [samples[2].id]]
    first = batches[0]
    assert torch.equal(first.pixel_values, torch.cat([items[0].pixel_values, items[1].pixel_values]))
    assert first.image_grid_thw.tolist() == [[1, 2, 4], [1, 2, 4]]  # each image 28x56 px: 2x4 patches
    assert first.pixel_values_videos is None and first.video_grid_thw.shape == (0, 3)
    for item, sl in zip(items, first.sample_slices()):
        assert torch.equal(first.input_ids[0, sl], item.input_ids)
        assert torch.equal(first.position_ids[:, 0, sl], item.position_ids)
    # every trained label is a target token of the same sample
    n0 = len(items[0])
    assert first.loss_mask[0, :n0].sum() == items[0].target_mask[1:].sum()
    assert torch.equal(first.labels[0, :n0 - 1][first.loss_mask[0, :n0 - 1].bool()],
                       items[0].input_ids[1:][items[0].target_mask[1:]])

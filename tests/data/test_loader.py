"""Sampler determinism and resume; DataStream skips undecodable media, logs one line per epoch,
gives the same micro-batches with 0 and 2 workers, and resumes at exactly the same sample."""

from __future__ import annotations

import logging

import pytest
import torch
from _synthetic import SMALL_VIDEO, dataset

from megatron_vrft.data import load_samples
from megatron_vrft.data.loader import DataStream, ResumableSampler, SampleDataset
from megatron_vrft.data.template import VisionTokenIds
from megatron_vrft.data.testing import build_tiny_tokenizer
from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig


def test_sampler_is_deterministic_and_splits_ranks():
    a, b = ResumableSampler(10, seed=3), ResumableSampler(10, seed=3)
    assert a.order(0) == b.order(0) and sorted(a.order(0)) == list(range(10))
    assert a.order(0) != a.order(1) and a.order(0) != ResumableSampler(10, seed=4).order(0)
    r0, r1 = ResumableSampler(11, seed=3, rank=0, world_size=2), ResumableSampler(11, seed=3, rank=1, world_size=2)
    assert len(r0.order(0)) == len(r1.order(0)) == 5 and not set(r0.order(0)) & set(r1.order(0))
    assert list(ResumableSampler(4, shuffle=False)) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_sampler_state_round_trip():
    s = ResumableSampler(10, seed=1)
    s.set_epoch(2)
    s.position = 7
    t = ResumableSampler(10, seed=1)
    t.load_state_dict(s.state_dict())
    assert list(t) == list(s) and list(t)[0] == (7, s.order(2)[7]) and len(t) == 3
    with pytest.raises(ValueError, match="num_samples was 10 in the checkpoint, now 12"):
        ResumableSampler(12, seed=1).load_state_dict(s.state_dict())


def _dp(n, ws, seed=5):
    return [ResumableSampler(n, seed=seed, rank=r, world_size=ws) for r in range(ws)]


def test_sampler_global_state_is_dp_independent():
    two = _dp(11, 2)
    perm = two[0].permutation(0)
    two[0].position, two[1].position = 3, 4  # rank 0 read perm[0, 2, 4], rank 1 perm[1, 3, 5, 7]
    state = two[0].global_state([s.local_state() for s in two])
    assert (state["epoch"], state["position"]) == (0, 6)  # everything below 6 read; 7 is in flight
    # same DP size: every rank exactly where it was
    again = _dp(11, 2)
    for s in again:
        s.load_global_state(state)
    assert [list(s) for s in again] == [list(s) for s in two]
    # another DP size: the rest of the epoch re-dealt from the global position, in the epoch's order
    three = _dp(11, 3)
    for s in three:
        s.load_global_state(state)
    assert [[i for _, i in s] for s in three] == [perm[6:9][r::3] for r in range(3)]
    one = _dp(11, 1)[0]
    one.load_global_state(state)
    assert [i for _, i in one] == perm[6:] and len(one) == 5
    # a state saved after the re-deal maps local positions back to global ones through the base
    one.position = 2
    assert one.global_state([one.local_state()])["position"] == 8
    # the next epoch is dealt from its start again
    one.set_epoch(1)
    assert [i for _, i in one] == one.permutation(1)
    with pytest.raises(ValueError, match="seed was 5 in the checkpoint, now 6"):
        _dp(11, 1, seed=6)[0].load_global_state(state)


def test_sampler_global_state_across_an_epoch_boundary():
    """A rank already in the next epoch counts as done with the oldest one."""
    two = _dp(8, 2)
    two[0].position = 3
    two[1].set_epoch(1)
    two[1].position = 1
    state = two[0].global_state([s.local_state() for s in two])
    assert (state["epoch"], state["position"]) == (0, 6)
    one = _dp(8, 1)[0]
    one.load_global_state(state)
    assert one.epoch == 0 and [i for _, i in one] == one.permutation(0)[6:]
    again = _dp(8, 2)
    for s in again:
        s.load_global_state(state)
    assert [s.local_state() for s in again] == [(0, 3, 0), (1, 1, 0)]


@pytest.fixture(scope="module")
def sft_setup():
    tok = build_tiny_tokenizer()
    ids = VisionTokenIds.from_tokenizer(tok)
    d = dataset("llava_conv", "sft")
    samples, _ = load_samples(d["path"], "llava_conv", d["media_root"], video_options=SMALL_VIDEO)
    rope = RopeIndexConfig(image_token_id=ids.image_pad, video_token_id=ids.video_pad)
    return tok, ids, samples, rope, d


def _stream(setup, workers, seed=0):
    tok, _, samples, rope, _ = setup
    return DataStream(SampleDataset(samples, tok, rope), ResumableSampler(len(samples), seed=seed),
                      num_workers=workers, fetch_size=2)


def _epoch(stream, budget, pad):
    return [(b.sample_ids, b.input_ids.clone()) for b in stream.micro_batches(budget, pad)]


@pytest.mark.parametrize("workers", [0, 2])
def test_sft_epoch_skips_corrupt_and_logs_once(sft_setup, workers, caplog):
    _, ids, samples, _, d = sft_setup
    caplog.set_level(logging.INFO, logger="megatron_vrft.data.loader")
    stream = _stream(sft_setup, workers)
    budget = 400
    batches = _epoch(stream, budget, ids.pad)
    seen = [sid for b, _ in batches for sid in b]
    assert len(seen) == len(samples) - 1 and len(set(seen)) == len(seen)  # the truncated mp4 is skipped
    assert all(x.shape[1] <= budget for _, x in batches)
    assert dict(stream.reports[0].skipped) == d["decode_skips"] == {"corrupt_media": 1}
    lines = [r.message for r in caplog.records if "epoch 0" in r.message]
    assert lines == ["train epoch 0: 6 samples from 7 records; skipped 1 (corrupt_media=1)"]
    assert stream.sampler.epoch == 1 and stream.sampler.position == 0
    # same data, same micro-batches, regardless of the number of workers
    reference = _epoch(_stream(sft_setup, 0), budget, ids.pad)
    assert [b for b, _ in batches] == [b for b, _ in reference]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(batches, reference))


def test_resume_continues_at_the_same_sample(sft_setup):
    _, ids, _, _, _ = sft_setup
    budget = 400
    full = [b for b, _ in _epoch(_stream(sft_setup, 0, seed=5), budget, ids.pad)]
    assert len(full) >= 3
    first = _stream(sft_setup, 0, seed=5)
    it = first.micro_batches(budget, ids.pad)
    done = [next(it).sample_ids for _ in range(2)]
    state = first.state_dict()
    resumed = _stream(sft_setup, 0, seed=5)
    resumed.load_state_dict(state)
    rest = [b.sample_ids for b in resumed.micro_batches(budget, ids.pad)]
    assert done + rest == full


def test_grpo_batches_carry_decoded_samples(sft_setup):
    tok, _, _, rope, _ = sft_setup
    d = dataset("time_r1_tg", "grpo")
    samples, _ = load_samples(d["path"], "time_r1_tg", d["media_root"], mode="grpo", video_options=SMALL_VIDEO)
    stream = DataStream(SampleDataset(samples, tok, rope, task="grpo"), ResumableSampler(len(samples), seed=0))
    batches = list(stream.grpo_batches(3))
    assert [len(b) for b in batches] == [3, 3]  # 6 usable of 7 (the truncated mp4 is skipped)
    item = batches[0][0]
    assert item.sample.visuals[0].frames.shape[0] == 4 and item.sample.target is None
    assert item.sequence.target_mask.sum() == 0 and item.sequence.video_grid_thw.shape == (1, 3)
    assert tok.decode(item.sequence.input_ids).endswith("<|im_start|>assistant\n")
    assert stream.reports[0].skipped == {"corrupt_media": 1}


def test_too_long_is_skipped(sft_setup):
    tok, _, samples, rope, _ = sft_setup
    stream = DataStream(SampleDataset(samples[:3], tok, rope, max_length=10), ResumableSampler(3))
    with pytest.raises(StopIteration):
        next(iter(stream.micro_batches(100, 0)))
    assert stream.reports[0].skipped == {"too_long": 3}


def test_subtitle_unreadable_and_bomb_media_are_skipped_not_raised(sft_setup, tmp_path, monkeypatch):
    """A malformed .srt, an .srt that exists but cannot be read (EIO) and an image over PIL's
    decompression-bomb limit each skip their sample, counted by reason; the epoch goes on."""
    import dataclasses

    from PIL import Image

    from megatron_vrft.data.sample import MediaRef

    tok, _, samples, rope, _ = sft_setup
    video = next(s for s in samples if s.media and s.media[0].kind == "video" and "corrupt" not in s.media[0].path)
    bad_srt = tmp_path / "bad.srt"
    bad_srt.write_text("1\n00:00:01,000 --> soon\nhello\n")

    def with_subtitles(srt, sid):
        ref = dataclasses.replace(video.media[0], subtitles=str(srt), overlay=("timestamps", "subtitles"))
        return dataclasses.replace(video, id=sid, media=[ref])

    image = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 2 * 1000: PIL raises DecompressionBombError
    bomb = dataclasses.replace(video, id="bomb", media=[MediaRef("image", path=str(image))],
                               messages=[{"role": "user", "content": [{"type": "image", "image": str(image)},
                                                                      {"type": "text", "text": "?"}]},
                                         {"role": "assistant", "content": "a"}], target="a")
    mixed = [with_subtitles(bad_srt, "bad_srt"), with_subtitles("/proc/self/mem", "eio_srt"), bomb, video]
    stream = DataStream(SampleDataset(mixed, tok, rope), ResumableSampler(len(mixed), shuffle=False), num_workers=0)
    seen = [sid for b in stream.micro_batches(4000, 0) for sid in b.sample_ids]
    assert seen == [video.id]
    assert dict(stream.reports[0].skipped) == {"bad_subtitles": 1, "unreadable_media": 1, "oversized_media": 1}

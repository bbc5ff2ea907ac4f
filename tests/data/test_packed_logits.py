"""Packed batches give the same per-sample logits and losses as each sample run alone (issue 5).

The whole data path, end to end: mp4 videos and PNG images written to ``tmp_path`` -> a
``llava_conv`` dataset file -> ``load_samples`` -> ``Sample.with_visuals()`` (decode, resize,
patchify) -> ``encode_sample`` (chat template, pad expansion, per-sample mRoPE) -> ``pack`` into one
THD row, with and without a padding segment (``pad_to_multiple_of``) -> ``Qwen25VLModel`` (TP=1,
PP=1, fp32, CPU; a tiny random HF model loaded through ``live.load_into_model``).

Four samples of different lengths: text + a 6-frame video (3 temporal patches, an odd count), text
+ an image, text only, and text + an image + a 4-frame video, so the packed row's single ViT call
takes images and videos of different samples, which must land back on the right pad tokens.

Reference: each sample's forward ALONE on the unpacked path (``[1, S]``, causal mask, no
``PackedSeqParams``). Checked per sample: max |logits| difference <= 1e-5, the masked sum of token
losses computed from the logits, the model's own per-token loss (``labels`` given), and that the
packed ``position_ids`` restart in every sample (equal to the sample's own).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from _mp4 import write_mp4
from PIL import Image

from megatron_vrft.data import load_samples
from megatron_vrft.data.packing import PackedBatch, SequenceItem, encode_sample, pack
from megatron_vrft.data.template import VisionTokenIds
from megatron_vrft.data.testing import build_tiny_tokenizer, vocab_size_of
from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig
from megatron_vrft.testing.spawn import run_distributed

LOGIT_TOL = 1e-5
LOSS_TOL = 1e-5
PAD_MULTIPLE = 16
# fps 2 on 10 fps videos: 30 frames (3 s) -> 6 sampled frames -> 3 temporal patches; 20 -> 4 -> 2.
VIDEO_OPTIONS = {"fps": 2, "min_pixels": 56 * 56, "max_pixels": 56 * 56}
IMAGE_OPTIONS = {"min_pixels": 56 * 56, "max_pixels": 56 * 112}
# 2 LLM layers, 2 ViT blocks (block 0 windowed, block 1 full attention). The 56 px window covers a
# whole 56x56 frame but splits the 56x112 and 84x56 images into 2 windows each (one partial).
MODEL_SHAPE = {"vision": {"depth": 2, "fullatt_block_indexes": [1]}}


def _hf_config_overrides(vocab_size: int) -> dict:
    return {**MODEL_SHAPE, "text": {"num_hidden_layers": 2, "vocab_size": vocab_size}}


def _write_dataset(root) -> None:
    write_mp4(root / "long.mp4", 30, fps=10, width=64, height=48)
    write_mp4(root / "short.mp4", 20, fps=10, width=64, height=48)
    rng = torch.Generator().manual_seed(0)
    for name, (h, w) in {"wide.png": (56, 112), "tall.png": (84, 56)}.items():
        pixels = torch.randint(0, 256, (h, w, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / name)

    def conv(question: str, answer: str) -> list[dict]:
        return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]

    records = [
        {"id": "video", "video": "long.mp4", "conversations": conv("<video>\nWhat moves?", "A grey block.")},
        {"id": "image", "image": "wide.png", "conversations": conv("<image>\nDescribe it.", "Noise.")},
        {"id": "text", "conversations": conv("Say hi to the packing test, please.", "Hi there, packer!")},
        {"id": "both", "image": "tall.png", "video": "short.mp4",
         "conversations": conv("<image> then <video>: same?", "<answer>no</answer>")},
    ]
    (root / "data.json").write_text(json.dumps(records))


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> tuple[list[SequenceItem], VisionTokenIds, int]:
    root = tmp_path_factory.mktemp("packed_logits")
    _write_dataset(root)
    tok = build_tiny_tokenizer()
    ids = VisionTokenIds.from_tokenizer(tok)
    samples, report = load_samples(root / "data.json", "llava_conv", root,
                                   video_options=VIDEO_OPTIONS, image_options=IMAGE_OPTIONS)
    assert report.num_skipped == 0 and [s.id for s in samples] == ["video", "image", "text", "both"]
    rope = RopeIndexConfig(image_token_id=ids.image_pad, video_token_id=ids.video_pad)
    return [encode_sample(s.with_visuals(), tok, rope) for s in samples], ids, vocab_size_of(tok)


def _forward_inputs(x: SequenceItem | PackedBatch) -> dict:
    """Model kwargs: a `PackedBatch` as a THD row with `PackedSeqParams`, an item as a ``[1, S]`` batch."""
    media = dict(
        pixel_values=x.pixel_values,
        image_grid_thw=x.image_grid_thw if x.pixel_values is not None else None,
        pixel_values_videos=x.pixel_values_videos,
        video_grid_thw=x.video_grid_thw if x.pixel_values_videos is not None else None,
    )
    if isinstance(x, SequenceItem):
        return dict(media, input_ids=x.input_ids.unsqueeze(0), position_ids=x.position_ids.unsqueeze(1))
    return dict(media, input_ids=x.input_ids, position_ids=x.position_ids, packed_seq_params=x.packed_seq_params())


def _forward_worker(rank: int, vocab_size: int, token_ids: VisionTokenIds, runs: list) -> list[dict]:
    """Builds the tiny model once and runs every input of ``runs`` (items or packed batches) through
    it: ``{"logits": [1, S, V], "loss": [1, S]}`` for each (loss from the model's ``labels`` path)."""
    from megatron_vrft.models.qwen2_5_vl.live import load_into_model
    from megatron_vrft.models.qwen2_5_vl.model import Qwen25VLModel
    from megatron_vrft.runtime import destroy_distributed, init_distributed
    from megatron_vrft.testing.tiny_qwen import tiny_hf_model

    init_distributed(1, 1, seed=0)
    try:
        hf = tiny_hf_model(seed=0, **_hf_config_overrides(vocab_size))
        cfg = hf.config
        cfg.image_token_id, cfg.video_token_id = token_ids.image_pad, token_ids.video_pad
        cfg.vision_start_token_id, cfg.vision_end_token_id = token_ids.vision_start, token_ids.vision_end
        model = Qwen25VLModel(cfg, perform_initialization=False)
        load_into_model(model, hf.state_dict(), cfg)
        model.eval()
        out = []
        with torch.no_grad():
            for x, labels in runs:
                inputs = _forward_inputs(x)
                out.append({
                    "logits": model(**inputs, runtime_gather_output=True),
                    "loss": model(**inputs, labels=labels),
                })
        return out
    finally:
        destroy_distributed()


def _alone_labels(item: SequenceItem, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token labels [S] and loss mask [S] of one sample, written out by hand (not via `pack`)."""
    labels = torch.cat([item.input_ids[1:], torch.tensor([pad_id])])
    mask = torch.cat([item.target_mask[1:], torch.tensor([False])]).float()
    return labels, mask


def _masked_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of token cross-entropies where ``mask`` is 1: logits [S, V], labels [S], mask [S]."""
    return (F.cross_entropy(logits.double(), labels, reduction="none") * mask.double()).sum()


@pytest.fixture(scope="module")
def batches(items) -> dict[int, PackedBatch]:
    """pad_to_multiple_of -> all samples packed into one row."""
    seqs, ids, _ = items
    return {m: pack(seqs, ids.pad, pad_to_multiple_of=m) for m in (1, PAD_MULTIPLE)}


@pytest.fixture(scope="module")
def results(items, batches):
    """(outputs of each sample alone, {pad_to_multiple_of: outputs of the packed row})."""
    seqs, ids, vocab = items
    runs = [(s, _alone_labels(s, ids.pad)[0].unsqueeze(0)) for s in seqs]
    runs += [(b, b.labels) for b in batches.values()]
    (outs,) = run_distributed(_forward_worker, 1, (vocab, ids, runs), timeout=300)
    return outs[: len(seqs)], dict(zip(batches, outs[len(seqs):]))


def test_inputs_cover_every_media_mix(items):
    seqs, ids, _ = items
    video, image, text, both = seqs
    assert video.video_grid_thw.tolist() == [[3, 4, 4]]  # odd number of temporal patches
    assert image.image_grid_thw.tolist() == [[1, 4, 8]] and image.pixel_values_videos is None
    assert text.pixel_values is None and text.pixel_values_videos is None
    assert both.image_grid_thw.tolist() == [[1, 6, 4]] and both.video_grid_thw.tolist() == [[2, 4, 4]]
    assert len({len(s) for s in seqs}) == len(seqs)
    assert int((video.input_ids == ids.video_pad).sum()) == 3 * 4 * 4 // 4


@pytest.mark.parametrize("multiple", [1, PAD_MULTIPLE])
def test_packed_positions_restart_per_sample(items, batches, multiple):
    # Checked on the ids themselves: RoPE is relative and attention stays inside a sample, so a
    # packer that offset each sample's positions by a constant would change the fp32 logits only by
    # rounding (tried: 5e-7), yet the ids would no longer be the ones rollout uses (every sequence
    # starts at 0 in vLLM), and a long pack would run past the trained position range.
    seqs, _, _ = items
    batch = batches[multiple]
    assert (batch.num_padding > 0) == (multiple > 1)
    assert batch.num_tokens % multiple == 0
    for seq, sl in zip(seqs, batch.sample_slices()):
        assert torch.equal(batch.position_ids[:, 0, sl], seq.position_ids)
        assert batch.position_ids[:, 0, sl.start].tolist() == [0, 0, 0]
    if batch.num_padding:
        pad = batch.position_ids[:, 0, -batch.num_padding:]
        assert torch.equal(pad, torch.arange(batch.num_padding).expand(3, -1))


@pytest.mark.parametrize("multiple", [1, PAD_MULTIPLE])
def test_packed_logits_and_losses_match_each_sample_alone(items, batches, results, multiple):
    seqs, ids, vocab = items
    alone, packed = results
    batch, out = batches[multiple], packed[multiple]
    assert out["logits"].shape == (1, batch.num_tokens, vocab)
    for seq, ref, sl in zip(seqs, alone, batch.sample_slices()):
        labels, mask = _alone_labels(seq, ids.pad)
        assert torch.equal(batch.labels[0, sl], labels) and torch.equal(batch.loss_mask[0, sl], mask)
        assert mask.sum() > 0
        logits = out["logits"][0, sl]
        diff = (logits - ref["logits"][0]).abs().max().item()
        assert diff <= LOGIT_TOL, f"sample {seq.sample_id}: packed vs alone logits differ by {diff:.3g}"
        want = _masked_loss(ref["logits"][0], labels, mask)
        assert _masked_loss(logits, labels, mask).item() == pytest.approx(want.item(), abs=LOSS_TOL)
        model_loss = (out["loss"][0, sl] * batch.loss_mask[0, sl]).sum()
        assert model_loss.item() == pytest.approx((ref["loss"][0] * mask).sum().item(), abs=LOSS_TOL)
        assert model_loss.item() == pytest.approx(want.item(), abs=1e-4)

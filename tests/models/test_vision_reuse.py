"""The ViT runs once per prompt: deduplicated media (``distinct_media``) and the per-step cache of a
frozen ViT (``VisionCache``) give the same logits and gradients as feeding every completion its own
copy of the prompt's pixels, with fewer ViT calls and patches.

A packed THD row of 5 GRPO sequences, interleaved A, B, A, B, A: prompt A has an image, prompt B a
video and an image. Tiny random Qwen2.5-VL (TP=1, fp32, CPU), loaded from HF weights.
"""

from __future__ import annotations

import pytest
import torch

from megatron_vrft.data.packing import SequenceItem, grpo_item, pack
from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig, get_rope_index
from megatron_vrft.testing.spawn import run_distributed
from megatron_vrft.testing.tiny_qwen import (
    IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_END_TOKEN_ID, VISION_START_TOKEN_ID, tiny_hf_config,
)

PATCH_DIM = 3 * 2 * 14 * 14
TOL = 1e-5


def _run(token, grid):
    t, h, w = grid
    return [VISION_START_TOKEN_ID] + [token] * (t * h * w // 4) + [VISION_END_TOKEN_ID]


def _prompt(name, segments, images, videos, gen):
    ids = []
    for seg in segments:
        ids += torch.randint(0, IMAGE_TOKEN_ID, (seg,), generator=gen).tolist() if isinstance(seg, int) else seg
    ids = torch.tensor(ids)
    img = torch.tensor(images, dtype=torch.long).reshape(-1, 3)
    vid = torch.tensor(videos, dtype=torch.long).reshape(-1, 3)
    seconds = torch.full((len(vid),), 1.0)
    pos, delta = get_rope_index(ids, RopeIndexConfig.from_hf_config(tiny_hf_config()), img, vid, seconds)

    def pixels(grids):
        return torch.randn(int(grids.prod(-1).sum()), PATCH_DIM, generator=gen) if len(grids) else None

    return SequenceItem(name, ids, torch.zeros(len(ids), dtype=torch.bool), pos, pixels(img), img, pixels(vid), vid,
                        seconds, rope_delta=delta)


def _items():
    gen = torch.Generator().manual_seed(0)
    a = _prompt("A", [3, _run(IMAGE_TOKEN_ID, (1, 4, 6)), 2], [(1, 4, 6)], [], gen)
    b = _prompt("B", [2, _run(VIDEO_TOKEN_ID, (2, 4, 4)), 2, _run(IMAGE_TOKEN_ID, (1, 4, 4)), 1], [(1, 4, 4)], [(2, 4, 4)], gen)
    lengths = [4, 3, 6, 2, 5]
    return [grpo_item(p, torch.randint(0, IMAGE_TOKEN_ID, (n,), generator=gen)) for p, n in zip([a, b, a, b, a], lengths)]


def _worker(rank, items):
    from megatron_vrft.models.qwen2_5_vl.live import load_into_model
    from megatron_vrft.models.qwen2_5_vl.model import Qwen25VLModel
    from megatron_vrft.models.qwen2_5_vl.vision_reuse import VisionCache, distinct_media
    from megatron_vrft.runtime import destroy_distributed, init_distributed
    from megatron_vrft.testing.tiny_qwen import tiny_hf_model

    init_distributed(1, 1, seed=0)
    try:
        hf = tiny_hf_model(seed=0)
        model = Qwen25VLModel(hf.config, perform_initialization=False)
        load_into_model(model, hf.state_dict(), hf.config)
        batch = pack(items, pad_id=0)
        text = dict(input_ids=batch.input_ids, position_ids=batch.position_ids,
                    packed_seq_params=batch.packed_seq_params(), runtime_gather_output=True)
        weight = torch.randn(batch.num_tokens, 129, generator=torch.Generator().manual_seed(1))

        def run(**media):
            """logits, the gradients of a fixed linear function of them, ViT calls made."""
            model.zero_grad(set_to_none=True)
            calls = model.vision_calls
            logits = model(**text, **media)
            (logits[0] * weight).sum().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            return {"logits": logits.detach(), "grads": grads, "calls": model.vision_calls - calls}

        out = {}
        full = dict(pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
                    pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw)
        out["full"] = run(**full)
        media = distinct_media(items)
        out["patches"] = (batch.pixel_values.shape[0], media.pixel_values.shape[0],
                          batch.pixel_values_videos.shape[0], media.pixel_values_videos.shape[0])
        out["index"] = (media.image_index.tolist(), media.video_index.tolist())
        out["dedup"] = run(**media.model_kwargs())
        # freeze_vision: the ViT blocks stop training; the merger trains or not (project).
        for p in model.vision_model.parameters():
            p.requires_grad_(False)
        for p in model.vision_model.projection.parameters():
            p.requires_grad_(True)
        out["frozen_full"] = run(**full)
        for project in (False, True):
            if project:
                for p in model.vision_model.projection.parameters():
                    p.requires_grad_(False)
                out["frozen_all_full"] = run(**full)
            cache = VisionCache(model, project=project)
            calls = model.vision_calls
            passes = [run(**cache.inputs(items)) for _ in range(3)]  # old, reference, update
            out[f"cache_{project}"] = passes[-1]
            out[f"cache_{project}_calls"] = model.vision_calls - calls
            out[f"cache_{project}_same"] = all(torch.equal(p["logits"], passes[0]["logits"]) for p in passes)
            out[f"cache_{project}_len"] = len(cache)
        try:
            model(**text, **{**media.model_kwargs(), "image_index": torch.tensor([0, 5, 0, 1, 0])})
        except ValueError as e:
            out["bad_index"] = str(e)
        return out
    finally:
        destroy_distributed()


@pytest.fixture(scope="module")
def out():
    (result,) = run_distributed(_worker, 1, (_items(),), timeout=240)
    return result


def _same(a, b, grads=True):
    assert (a["logits"] - b["logits"]).abs().max() <= TOL
    if grads:
        assert a["grads"].keys() == b["grads"].keys() and a["grads"]
        for name in a["grads"]:
            diff = (a["grads"][name] - b["grads"][name]).abs().max()
            assert diff <= TOL * max(1.0, a["grads"][name].abs().max()), (name, float(diff))


def test_distinct_media_one_vision_pass_per_prompt(out):
    # 3 copies of A's 24-patch image + 2 of B's 16-patch image -> one each; B's video 2 x 32 -> 32.
    assert out["patches"] == (3 * 24 + 2 * 16, 24 + 16, 2 * 32, 32)
    assert out["index"] == ([0, 1, 0, 1, 0], [0, 0])
    assert out["full"]["calls"] == out["dedup"]["calls"] == 1
    _same(out["full"], out["dedup"])  # ViT gradients accumulate over the sequences sharing a medium
    assert any(n.startswith("vision_model.decoder") for n in out["dedup"]["grads"])


@pytest.mark.parametrize("project", [False, True])
def test_frozen_vision_cache_one_call_per_step(out, project):
    assert out[f"cache_{project}_calls"] == 1  # three passes, one ViT call
    assert out[f"cache_{project}_same"] and out[f"cache_{project}_len"] == 3  # A image, B image, B video
    ref = out["frozen_all_full"] if project else out["frozen_full"]
    _same(ref, out[f"cache_{project}"])
    trains_merger = any(n.startswith("vision_model.projection") for n in out[f"cache_{project}"]["grads"])
    assert trains_merger == (not project)
    assert not any(n.startswith("vision_model.decoder") for n in out[f"cache_{project}"]["grads"])


def test_bad_index_is_an_error(out):
    assert "image_index [0, 5, 0, 1, 0] refers past the 2 image(s) given" in out["bad_index"]

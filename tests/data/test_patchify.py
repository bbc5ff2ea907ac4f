"""patchify_image / patchify_video against transformers' Qwen2-VL image processor and hand values.

transformers' video processor imports torchvision at module level, which has no CPU build here, so
videos are checked through the image processor: a video row is [C, temporal=2, 14, 14] with temporal
slot k taken from frame 2t+k, and an image row is the same layout with the one frame in both slots.
Matching every (t, k) slot against the image processor's output for frame 2t+k therefore checks the
normalisation, the spatial merge-block order and the temporal interleaving of the video layout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2VLImageProcessorPil

from megatron_vrft.data.media import load_image
from megatron_vrft.data.patchify import patchify_image, patchify_video

TOL = 1e-6  # HF's PIL backend rescales then normalises; we fuse them like HF's torch backend


def _hf_image(image: torch.Tensor, **kwargs) -> tuple[torch.Tensor, list[int]]:
    proc = Qwen2VLImageProcessorPil(**kwargs)
    out = proc(images=Image.fromarray(image.permute(1, 2, 0).numpy()), return_tensors="pt", do_resize=False)
    return out["pixel_values"], out["image_grid_thw"][0].tolist()


@pytest.mark.parametrize("h,w", [(28, 28), (56, 84), (140, 224), (84, 28)])
def test_image_matches_hf_image_processor(h, w):
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h * w))
    pixel_values, grid = patchify_image(image)
    ref, ref_grid = _hf_image(image)
    assert grid.tolist() == ref_grid == [1, h // 14, w // 14]
    assert pixel_values.dtype == torch.float32 and pixel_values.shape == ref.shape == (h * w // 196, 1176)
    assert (pixel_values - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("min_pixels,max_pixels", [(None, None), (3136, 20000), (200000, 400000)])
def test_image_full_path_matches_hf_resize(tmp_path, min_pixels, max_pixels):
    # load_image resizes like qwen-vl-utils (PIL bicubic); HF's PIL backend resizes the original with
    # PIL bicubic too. For sizes where both smart_resize variants agree the outputs must match.
    rng = np.random.default_rng(0)
    path = tmp_path / "img.png"
    Image.fromarray((rng.random((150, 230, 3)) * 255).astype(np.uint8)).save(path)
    pixel_values, grid = patchify_image(load_image(path, min_pixels, max_pixels))
    kwargs = {} if min_pixels is None else dict(min_pixels=min_pixels, max_pixels=max_pixels)
    out = Qwen2VLImageProcessorPil(**kwargs)(images=Image.open(path), return_tensors="pt")
    assert grid.tolist() == out["image_grid_thw"][0].tolist()
    assert (pixel_values - out["pixel_values"]).abs().max().item() <= TOL


@pytest.mark.parametrize("n_frames", [4, 3, 1, 11])  # 11: several normalisation chunks, odd
def test_video_matches_hf_image_processor_per_frame(n_frames):
    h, w = 56, 84
    frames = torch.randint(0, 256, (n_frames, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    pixel_values, grid, second_per_grid_t = patchify_video(frames, sample_fps=2.0)
    grid_t = (n_frames + 1) // 2
    assert grid.dtype == torch.long and grid.tolist() == [grid_t, h // 14, w // 14]
    assert second_per_grid_t == 1.0  # temporal_patch_size / sample_fps
    n_spatial = (h // 14) * (w // 14)
    assert pixel_values.shape == (grid_t * n_spatial, 1176)
    video = pixel_values.view(grid_t, n_spatial, 3, 2, 196)
    for t in range(grid_t):
        for k in range(2):
            frame = min(2 * t + k, n_frames - 1)  # odd T: the last frame is repeated
            ref, _ = _hf_image(frames[frame])
            ref_slot = ref.view(n_spatial, 3, 2, 196)[:, :, 0]
            assert (video[t, :, :, k] - ref_slot).abs().max().item() <= TOL, (t, k)


def test_row_order_by_hand():
    # 56x56 image whose 14x14 patch (r, c) is flat with value 10*r + c. Rows go merge block by merge
    # block (row-major over blocks), and within a block patch by patch (row-major).
    image = torch.zeros(3, 56, 56, dtype=torch.uint8)
    for r in range(4):
        for c in range(4):
            image[:, 14 * r : 14 * r + 14, 14 * c : 14 * c + 14] = 10 * r + c
    pixel_values, _ = patchify_image(image)
    mean_r, std_r = 0.48145466, 0.26862954
    raw = pixel_values[:, 0] * (255 * std_r) + 255 * mean_r  # undo normalisation of the red channel
    expected = [0, 1, 10, 11, 2, 3, 12, 13, 20, 21, 30, 31, 22, 23, 32, 33]
    assert raw.round().long().tolist() == expected


def test_normalisation_constants_by_hand():
    black, _ = patchify_image(torch.zeros(3, 28, 28, dtype=torch.uint8))
    white, _ = patchify_image(torch.full((3, 28, 28), 255, dtype=torch.uint8))
    rows = black.view(4, 3, 392)
    # (0 - mean) / std per channel, OPENAI CLIP constants
    for c, value in enumerate([-1.7922625, -1.7520971, -1.4802197]):
        assert torch.allclose(rows[:, c], torch.full_like(rows[:, c], value), atol=1e-6)
    for c, value in enumerate([1.9303363, 2.0748838, 2.1458970]):
        assert torch.allclose(white.view(4, 3, 392)[:, c], torch.full((4, 392), value), atol=1e-6)


def test_second_per_grid_t_and_noncontiguous_input():
    frames = torch.randint(0, 256, (2, 28, 56, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # decord-like view
    pixel_values, grid, spg = patchify_video(frames, sample_fps=0.8)
    assert spg == pytest.approx(2.5)
    assert grid.tolist() == [1, 2, 4]
    ref, _, _ = patchify_video(frames.contiguous(), sample_fps=0.8)
    assert torch.equal(pixel_values, ref)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="multiple of patch\\*merge"):
        patchify_image(torch.zeros(3, 28, 42, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        patchify_video(torch.zeros(2, 3, 28, 28), sample_fps=2.0)
    with pytest.raises(ValueError, match="sample_fps"):
        patchify_video(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), sample_fps=0.0)

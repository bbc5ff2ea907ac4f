"""Patchify resized frames into Qwen2.5-VL vision inputs, as transformers' Qwen2-VL processors do.

Reproduces transformers 5.x `Qwen2VLVideoProcessor._preprocess` / `Qwen2VLImageProcessor._preprocess`
with `do_resize` a no-op (frames arrive already resized by `read_video` / `load_image`, as they do
from qwen-vl-utils):

1. rescale + normalize, fused the way the torch backends fuse them: x' = (x - 255*mean) / (255*std)
   in float32 with OPENAI_CLIP mean/std. This is bit-identical to the torch (torchvision) backends
   and within ~1e-6 of the numpy/PIL backend, which rescales and normalizes in two steps.
2. videos with an odd number of frames get the last frame repeated (temporal_patch_size 2);
   images are one frame broadcast over the temporal patch.
3. rows are patches in merge-block order: for each temporal group t, each 2x2 merge block (row-major
   over the grid of blocks), each patch within the block (row-major); a row is flattened
   [C=3, temporal=2, 14, 14] = 1176 values.

Per-row token count after the vision merger is grid_t * grid_h * grid_w / merge_size**2.
"""

from __future__ import annotations

import numpy as np
import torch

PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
# transformers.image_utils.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# transformers computes mean * (1.0 / rescale_factor) with rescale_factor = 1/255 in float32.
_MEAN_255 = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float32) * (1.0 / (1 / 255))
_STD_255 = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float32) * (1.0 / (1 / 255))
_GROUP_CHUNK = 2  # temporal groups normalised per step in _patchify


def _patchify(
    frames: torch.Tensor, patch: int, temporal: int, merge: int, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[int]]:
    """uint8 [T, C, H, W] (T a multiple of `temporal`) -> (float32 [N, C*temporal*patch*patch], [t, h, w]).

    `out`, when given, is the float32 [N, C*temporal*patch*patch] destination (N = T/temporal*H*W/patch**2).
    """
    t, c, h, w = frames.shape
    if h % (patch * merge) or w % (patch * merge):
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch*merge = {patch * merge}")
    gt, gh, gw = t // temporal, h // patch, w // patch
    # numpy, not torch, for the reorder: its strided copy has a far lower cost per run of `patch`
    # contiguous bytes (~1.7x faster here); any strides work, including expanded images (stride 0).
    x = frames.numpy().reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    # -> [gt, gh/m, gw/m, m(h), m(w), C, temporal, patch(h), patch(w)]
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    if out is None:
        out = torch.empty((gt, gh * gw, c, temporal * patch * patch), dtype=torch.float32)
    else:
        out = out.view(gt, gh * gw, c, temporal * patch * patch)
    mean, std = _MEAN_255.view(1, c, 1), _STD_255.view(1, c, 1)
    # Reorder as uint8 (4x less data than floats), then convert and normalise the contiguous rows in
    # place. The arithmetic is elementwise, so the order does not change a value; a few temporal
    # groups at a time keep each block in cache between the passes.
    staging = np.empty((min(gt, _GROUP_CHUNK),) + x.shape[1:], dtype=np.uint8)
    for start in range(0, gt, _GROUP_CHUNK):
        src = x[start : start + _GROUP_CHUNK]
        np.copyto(staging[: len(src)], src)
        block = out[start : start + len(src)]
        block.view(-1).copy_(torch.from_numpy(staging[: len(src)]).view(-1))
        block.view(-1, c, temporal * patch * patch).sub_(mean).div_(std)
    return out.view(gt * gh * gw, c * temporal * patch * patch), [gt, gh, gw]


def patchify_video(
    frames: torch.Tensor,
    *,
    sample_fps: float,
    patch_size: int = PATCH_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """uint8 frames [T, 3, H, W] (H, W multiples of 28) -> Qwen2.5-VL video inputs.

    Returns (pixel_values_videos float32 [grid_t*grid_h*grid_w, 3*2*14*14],
    video_grid_thw int64 [3] = (ceil(T/2), H/14, W/14), second_per_grid_t = 2 / sample_fps).
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[0] == 0:
        raise ValueError(f"patchify_video expects uint8 [T>0, C, H, W], got {frames.dtype} {tuple(frames.shape)}")
    if sample_fps <= 0:
        raise ValueError(f"patchify_video: sample_fps must be > 0, got {sample_fps}")
    if pad := -frames.shape[0] % temporal_patch_size:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    pixel_values, grid = _patchify(frames, patch_size, temporal_patch_size, merge_size)
    return pixel_values, torch.tensor(grid, dtype=torch.long), temporal_patch_size / sample_fps


class VideoPatchStream:
    """Patchify a video chunk by chunk while it decodes: pass it as `read_video(on_chunk=...)`.

    Each chunk (uint8 [t, 3, H, W] at frame offset `start`, t even except for an odd last chunk)
    is patchified into its rows of one preallocated output, so the result equals
    `patchify_video(frames, ...)` on the whole video, value for value.
    """

    def __init__(self, patch_size: int = PATCH_SIZE, temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
                 merge_size: int = MERGE_SIZE):
        self._sizes = (patch_size, temporal_patch_size, merge_size)
        self._pixel_values: torch.Tensor | None = None
        self._grid: list[int] | None = None
        self._sample_fps = 0.0
        self._frames_seen = 0
        self._total = 0

    def __call__(self, frames: torch.Tensor, start: int, info) -> None:
        """`info` is read_video's VideoInfo (frame count and sample_fps); `start` a frame offset."""
        patch, temporal, merge = self._sizes
        total = len(info.frame_indices)
        if start % temporal or (len(frames) % temporal and start + len(frames) != total):
            raise ValueError(f"VideoPatchStream: chunk at frame {start} of {len(frames)} frames is not aligned "
                             f"to temporal_patch_size {temporal}")
        _, c, h, w = frames.shape
        if self._pixel_values is None or start == 0:
            self._grid = [-(-total // temporal), h // patch, w // patch]
            rows = self._grid[0] * self._grid[1] * self._grid[2]
            self._pixel_values = torch.empty((rows, c * temporal * patch * patch), dtype=torch.float32)
            self._sample_fps = info.sample_fps
            self._frames_seen, self._total = 0, total
        self._frames_seen += len(frames)
        if pad := -len(frames) % temporal:
            frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
        per_group = self._grid[1] * self._grid[2]
        first = start // temporal * per_group
        dest = self._pixel_values[first : first + len(frames) // temporal * per_group]
        _patchify(frames, patch, temporal, merge, out=dest)

    def result(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """-> (pixel_values_videos, video_grid_thw, second_per_grid_t), as `patchify_video` returns."""
        if self._pixel_values is None or self._frames_seen != self._total:
            raise RuntimeError(f"VideoPatchStream.result(): got {self._frames_seen} of {self._total} frames")
        return self._pixel_values, torch.tensor(self._grid, dtype=torch.long), self._sizes[1] / self._sample_fps


def patchify_image(
    image: torch.Tensor,
    *,
    patch_size: int = PATCH_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 image [3, H, W] (H, W multiples of 28) -> Qwen2.5-VL image inputs.

    Returns (pixel_values float32 [grid_h*grid_w, 3*2*14*14], image_grid_thw int64 [3] = (1, H/14, W/14)).
    """
    if image.dtype != torch.uint8 or image.dim() != 3:
        raise ValueError(f"patchify_image expects uint8 [C, H, W], got {image.dtype} {tuple(image.shape)}")
    frames = image.unsqueeze(0).expand(temporal_patch_size, -1, -1, -1)
    pixel_values, grid = _patchify(frames, patch_size, temporal_patch_size, merge_size)
    return pixel_values, torch.tensor(grid, dtype=torch.long)

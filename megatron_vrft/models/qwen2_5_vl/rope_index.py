"""Qwen2.5-VL 3-D mRoPE position ids for one sample, computed before packing.

Text tokens get the same position on all three axes (t, h, w), increasing by one per token. The
``t*h*w/merge**2`` pad tokens of an image or video get ``(start + t_idx * interval, start + h_idx,
start + w_idx)`` where ``interval = tokens_per_second * second_per_grid_t`` for videos (``second_per
_grid_t = temporal_patch_size / sample_fps``: the seconds one temporal patch spans) and 1 for
images; temporal ids are truncated to integers *after* multiplying by the grid index, as HF does.

Where the next text starts after an image or video, two conventions exist, selected by ``mode``:

* ``"qwen"`` (default): one past the largest position used so far. This is the original Qwen2.5-VL
  code (transformers 4.49 .. 5.2) and vLLM's ``MRotaryEmbedding``, i.e. what the released
  checkpoints were trained with and what the rollout engine uses, so training and rollout agree.
* ``"hf_5_23"``: ``start + max(h, w) / merge``, as transformers 5.3 .. 5.23 ``get_rope_index`` does
  (``current_pos += max(grid_thw[1], grid_thw[2]) // spatial_merge_size``). For a video whose
  temporal extent exceeds its spatial extent this differs from ``"qwen"``. It exists so the model can
  be compared with transformers' forward, which computes positions this way.

Both conventions agree for images and text. ``rope_delta = max(position) + 1 - S`` is what
incremental decoding adds to the cache position (HF and vLLM both use max + 1 there).

Packing concatenates these per-sample ids unchanged (positions restart in each sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROPE_MODES = ("qwen", "hf_5_23")


class RopeIndexError(ValueError):
    """The token ids and the vision grids of a sample do not agree."""


@dataclass(frozen=True)
class RopeIndexConfig:
    """What `get_rope_index` needs from the model config and the tokenizer."""

    image_token_id: int = 151655
    video_token_id: int = 151656
    spatial_merge_size: int = 2
    # Released checkpoints set 2 in vision_config; the HF class default is 4, so always read the config.
    tokens_per_second: float = 2.0
    mode: str = "qwen"

    def __post_init__(self):
        if self.mode not in ROPE_MODES:
            raise RopeIndexError(f"mode must be one of {ROPE_MODES}, got {self.mode!r}")

    @classmethod
    def from_hf_config(cls, config, mode: str = "qwen") -> "RopeIndexConfig":
        """From a transformers ``Qwen2_5_VLConfig`` (top-level, with ``vision_config``)."""
        vision = config.vision_config
        return cls(
            image_token_id=config.image_token_id,
            video_token_id=config.video_token_id,
            spatial_merge_size=vision.spatial_merge_size,
            tokens_per_second=vision.tokens_per_second,
            mode=mode,
        )


def _temporal_ids(t: int, seconds: float | None, tokens_per_second: float, mode: str) -> torch.Tensor:
    """[t] temporal position offsets of a video's (or, with ``seconds=None``, an image's) patches.

    Computed in float32 and truncated like the references, so ids agree even when ``k * interval``
    lands next to an integer: vLLM/Qwen compute ``(k * s) * tps``, transformers 5.23 ``k * (tps * s)``.
    """
    k = torch.arange(t, dtype=torch.float32)
    if seconds is None:
        return k.long()
    s = torch.tensor(seconds, dtype=torch.float32)
    if mode == "qwen":
        return (k * s * tokens_per_second).long()
    return (k * (s * tokens_per_second)).long()


def _vision_positions(start: int, grid: list[int], merge: int, t_idx: torch.Tensor) -> torch.Tensor:
    """[3, t*h*w/merge**2] positions of one image/video, in the ViT merger's (t, h, w) row-major order."""
    tt, hh, ww = torch.meshgrid(t_idx, torch.arange(grid[1] // merge), torch.arange(grid[2] // merge), indexing="ij")
    return torch.stack([tt, hh, ww]).reshape(3, -1) + start


def get_rope_index(
    input_ids: torch.Tensor,
    config: RopeIndexConfig,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts=None,
) -> tuple[torch.Tensor, int]:
    """3-D mRoPE ids of one unpadded sample.

    input_ids: [S] token ids with vision pads already expanded.
    image_grid_thw: [n_img, 3]; video_grid_thw: [n_vid, 3]; second_per_grid_ts: [n_vid] floats
    (seconds per temporal patch; defaults to 1.0 as in HF).
    Returns ``(position_ids [3, S] int64, rope_delta)`` with ``rope_delta = max + 1 - S``.
    Consecutive images (or videos) with no text between them are split by their token counts.
    """
    ids = torch.as_tensor(input_ids).reshape(-1)
    merge = config.spatial_merge_size
    grids = {
        config.image_token_id: [] if image_grid_thw is None else torch.as_tensor(image_grid_thw).reshape(-1, 3).tolist(),
        config.video_token_id: [] if video_grid_thw is None else torch.as_tensor(video_grid_thw).reshape(-1, 3).tolist(),
    }
    n_vid = len(grids[config.video_token_id])
    if second_per_grid_ts is None:
        seconds = [1.0] * n_vid
    else:
        seconds = torch.as_tensor(second_per_grid_ts, dtype=torch.float64).reshape(-1).tolist()
        if len(seconds) != n_vid:
            raise RopeIndexError(f"second_per_grid_ts has {len(seconds)} values for {n_vid} videos")
    seconds_of = {config.image_token_id: [None] * len(grids[config.image_token_id]), config.video_token_id: seconds}
    used = {config.image_token_id: 0, config.video_token_id: 0}

    chunks: list[torch.Tensor] = []
    next_pos = 0  # where the next text token goes
    i, S = 0, ids.numel()
    id_list = ids.tolist()
    while i < S:
        tok = id_list[i]
        if tok not in grids:
            j = i
            while j < S and id_list[j] not in grids:
                j += 1
            chunks.append(torch.arange(next_pos, next_pos + j - i).expand(3, -1))
            next_pos += j - i
            i = j
            continue
        k = used[tok]
        kind = "image" if tok == config.image_token_id else "video"
        if k >= len(grids[tok]):
            raise RopeIndexError(f"more {kind} pad runs than {kind}_grid_thw rows ({len(grids[tok])}) at token {i}")
        grid = grids[tok][k]
        n = grid[0] * (grid[1] // merge) * (grid[2] // merge)
        if id_list[i:i + n] != [tok] * n:
            raise RopeIndexError(f"{kind} {k} with grid {grid} needs {n} consecutive pad tokens at token {i}")
        t_idx = _temporal_ids(grid[0], seconds_of[tok][k], config.tokens_per_second, config.mode)
        pos = _vision_positions(next_pos, grid, merge, t_idx)
        chunks.append(pos)
        if config.mode == "qwen":
            next_pos = int(pos.max()) + 1
        else:
            next_pos += max(grid[1], grid[2]) // merge
        used[tok] = k + 1
        i += n
    for tok, grid_list in grids.items():
        if used[tok] != len(grid_list):
            kind = "image" if tok == config.image_token_id else "video"
            raise RopeIndexError(f"{kind}_grid_thw has {len(grid_list)} rows but input_ids hold {used[tok]} {kind}s")
    position_ids = torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.long)
    rope_delta = (int(position_ids.max()) + 1 - S) if S else 0
    return position_ids, rope_delta


def extend_positions(position_ids: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of ``n`` text tokens appended after a prompt (generated completion tokens).

    position_ids: [3, S] of the prompt. Returns [3, S + n]; new tokens continue at ``max + 1``,
    exactly where HF's and vLLM's incremental decoding put them (cache position + rope_delta).
    """
    start = int(position_ids.max()) + 1 if position_ids.numel() else 0
    return torch.cat([position_ids, torch.arange(start, start + n).expand(3, -1)], dim=1)

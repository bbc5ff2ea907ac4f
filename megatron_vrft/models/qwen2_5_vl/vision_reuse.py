"""Run the ViT once per prompt, not once per completion (GRPO).

The G completions of a prompt are G sequences (``data.packing.grpo_item``) that share the prompt's
pixel tensors (the very same objects), so a micro-batch holding several of them repeats the same
media. Two levels of reuse, both feeding ``Qwen25VLModel.forward``'s ``image_index`` /
``video_index``:

- ``distinct_media(items)``: within one forward, each distinct pixel tensor goes through the ViT
  once; ``image_index`` / ``video_index`` place its output at every sequence that uses it.
- ``VisionCache`` (``model.freeze_vision``): the ViT's output of each prompt's media is computed
  once per step (no grad) and reused by every later forward of the step: the old-logprob, the
  reference and the update passes. With a trained merger (``freeze_projector`` off) it keeps the
  merger's input instead and each forward projects it with its own merger, so the reference model
  (whose frozen ViT equals the policy's) can share the cache too.

Media identity is object identity: two items hold the same medium when they hold the same pixel
tensor. Equal pixels in different tensors (the same video in two prompts) are encoded twice, which
is correct, only not deduplicated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from megatron_vrft.models.qwen2_5_vl.model import VisionEmbeddings

__all__ = ["MediaInputs", "distinct_media", "VisionCache"]

_KINDS = (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw"))


@dataclass
class MediaInputs:
    """Model inputs for the media of a micro-batch, each distinct medium once.

    pixel_values [Σ distinct patches, C·Tp·P·P] or None; image_grid_thw [n_distinct, 3];
    image_index [n_images_of_the_batch] int64 into the distinct images (same for videos).
    """

    pixel_values: Optional[torch.Tensor]
    image_grid_thw: Optional[torch.Tensor]
    image_index: torch.Tensor
    pixel_values_videos: Optional[torch.Tensor]
    video_grid_thw: Optional[torch.Tensor]
    video_index: torch.Tensor

    def model_kwargs(self) -> dict:
        return dict(pixel_values=self.pixel_values, image_grid_thw=self.image_grid_thw, image_index=self.image_index,
                    pixel_values_videos=self.pixel_values_videos, video_grid_thw=self.video_grid_thw,
                    video_index=self.video_index)


def _groups(items: Sequence, pixels_attr: str, grid_attr: str):
    """(distinct (pixels, grid) groups in first-use order, per-medium index over the batch)."""
    groups, first_medium, index, count = [], {}, [], 0
    for item in items:
        pixels, grid = getattr(item, pixels_attr), torch.as_tensor(getattr(item, grid_attr)).reshape(-1, 3)
        if pixels is None:
            if len(grid):
                raise ValueError(f"item {getattr(item, 'sample_id', '?')}: {grid_attr} without {pixels_attr}")
            continue
        key = id(pixels)
        if key not in first_medium:
            first_medium[key] = count
            groups.append((pixels, grid))
            count += len(grid)
        index.extend(range(first_medium[key], first_medium[key] + len(grid)))
    return groups, torch.tensor(index, dtype=torch.long)


def distinct_media(items: Sequence) -> MediaInputs:
    """The media of ``items`` (``SequenceItem``s in packing order) with repeats removed."""
    out = {}
    for kind, pixels_attr, grid_attr in _KINDS:
        groups, index = _groups(items, pixels_attr, grid_attr)
        out[pixels_attr] = torch.cat([p for p, _ in groups]) if groups else None
        out[grid_attr] = torch.cat([g for _, g in groups]) if groups else None
        out[f"{kind}_index"] = index
    return MediaInputs(**out)


class VisionCache:
    """Vision embeddings of each prompt's media, computed once per step with a frozen ViT.

    ``project``: cache the merger's output (ViT and merger frozen) or its input (merger trained).
    ``inputs(items)`` encodes, in one ViT call, the media not cached yet and returns the model
    kwargs of the micro-batch; ``clear()`` at the end of the step (weights may change after it).
    """

    def __init__(self, model, *, project: bool):
        self.model = model
        self.project = project
        self._cache: dict[tuple[str, int], tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    def _fill(self, items: Sequence) -> None:
        missing = {kind: {} for kind, *_ in _KINDS}
        for kind, pixels_attr, grid_attr in _KINDS:
            for item in items:
                pixels = getattr(item, pixels_attr)
                if pixels is not None and (kind, id(pixels)) not in self._cache:
                    missing[kind][id(pixels)] = (pixels, torch.as_tensor(getattr(item, grid_attr)).reshape(-1, 3))
        images, videos = list(missing["image"].values()), list(missing["video"].values())
        if not images and not videos:
            return
        with torch.no_grad():
            emb = self.model.encode_vision(
                torch.cat([p for p, _ in images]) if images else None,
                torch.cat([g for _, g in images]) if images else None,
                torch.cat([p for p, _ in videos]) if videos else None,
                torch.cat([g for _, g in videos]) if videos else None,
                project=self.project,
            )
        for kind, groups, parts in (("image", images, emb.images), ("video", videos, emb.videos)):
            offset = 0
            for pixels, grid in groups:
                # The pixel tensor is kept alive with its entry, so its id cannot be reused meanwhile.
                self._cache[(kind, id(pixels))] = (pixels, parts[offset: offset + len(grid)])
                offset += len(grid)

    def inputs(self, items: Sequence) -> dict:
        """Model kwargs (``vision_embeddings``, ``image_index``, ``video_index``) for ``items``."""
        self._fill(items)
        kwargs, lists = {}, {}
        for kind, pixels_attr, grid_attr in _KINDS:
            groups, index = _groups(items, pixels_attr, grid_attr)
            lists[kind] = [t for pixels, _ in groups for t in self._cache[(kind, id(pixels))][1]]
            kwargs[f"{kind}_index"] = index
        kwargs["vision_embeddings"] = VisionEmbeddings(lists["image"], lists["video"], projected=self.project)
        return kwargs

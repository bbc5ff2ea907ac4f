"""The one `Sample` type that flows from a dataset adapter to collate, rollout and rewards.

A `Sample` is light when an adapter makes it (text, media references, reward columns) and gets its
decoded media (`visuals`) once per use, in a DataLoader worker: `with_visuals()` returns a copy that
carries the sampled frames, the patchified pixel values, the grids and the sampling facts (sample
fps, timestamps). That copy is what rollout *and* training consume, so both see the same frames
(and the same ``second_per_grid_ts`` for mRoPE). The dataset keeps only light samples, so memory
does not grow over an epoch.

Reward columns travel in ``Sample.columns`` under the names the reward library reads: ``solution``,
``gt_span``, ``duration``, ``task_type``, ``reference_queries``, ``choices``, ``answer`` (and
``temporal_grounding``/``question`` for Video-R2's TAR). Only the columns a format has are present.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from megatron_vrft.data.media import MediaError, load_image
from megatron_vrft.data.patchify import VideoPatchStream, patchify_image
from megatron_vrft.data.video import VideoInfo, read_video

REWARD_COLUMNS = (
    "solution", "gt_span", "duration", "task_type", "reference_queries", "choices", "answer",
    "temporal_grounding", "question",
)

# Per-media sampling keys (qwen-vl-utils names) and what `read_video`/`load_image` accept.
VIDEO_OPTION_KEYS = ("fps", "nframes", "min_pixels", "max_pixels", "total_pixels", "video_start", "video_end",
                     "min_frames", "max_frames")
IMAGE_OPTION_KEYS = ("min_pixels", "max_pixels")

# `MediaError.reason` -> the skip reason counted in reports.
MEDIA_SKIP_REASONS = {
    "missing": "missing_media",
    "empty": "empty_media",
    "corrupt": "corrupt_media",
    "too_short": "short_media",
    "out_of_range": "bad_timestamp",
    "bad_aspect": "bad_aspect_media",
    "too_large": "oversized_media",
}


class DataFormatError(ValueError):
    """A dataset file cannot be used at all (unreadable, wrong shape, no usable sample, bad option)."""


class SkipRecord(Exception):
    """Raised by adapters for one bad record: it is skipped and counted under ``reason``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class MediaRef:
    """One image or video a sample uses, with its own sampling options.

    ``path`` is resolved and checked against the media root by the adapter; ``data`` holds encoded
    image bytes (parquet datasets) instead of a path. ``options`` are qwen-vl-utils keys
    (`VIDEO_OPTION_KEYS` / `IMAGE_OPTION_KEYS`). ``subtitles`` is an ``.srt`` path; ``overlay``
    names what to draw on sampled frames (``"timestamps"``, ``"subtitles"``), as Video-R2 does.
    """

    kind: str  # "video" | "image"
    path: str | None = None
    data: bytes | None = None
    options: dict[str, Any] = field(default_factory=dict)
    subtitles: str | None = None
    overlay: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("video", "image"):
            raise ValueError(f"MediaRef.kind must be 'video' or 'image', got {self.kind!r}")
        if (self.path is None) == (self.data is None):
            raise ValueError("MediaRef needs exactly one of path and data")
        allowed = VIDEO_OPTION_KEYS if self.kind == "video" else IMAGE_OPTION_KEYS
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(f"unknown {self.kind} sampling option(s) {unknown}; allowed: {list(allowed)}")
        if self.options.get("fps") is not None and self.options.get("nframes") is not None:
            raise ValueError("video sampling takes fps or nframes, not both")

    def describe(self) -> str:
        return self.path if self.path is not None else f"<{len(self.data)} bytes>"


@dataclass
class Visual:
    """One decoded media item, ready for the model and for a rollout engine.

    pixel_values: float32 [grid_t*grid_h*grid_w, 3*2*14*14] (HF's ``pixel_values(_videos)`` rows).
    grid_thw: int64 [3]. frames: uint8 [T, 3, H, W] (video) or [3, H, W] (image), the resized
    frames the pixel values come from (what vLLM's ``multi_modal_data`` takes).
    second_per_grid_t: seconds per temporal patch (video only), ``2 / info.sample_fps``.
    """

    kind: str
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    frames: torch.Tensor
    second_per_grid_t: float | None = None
    info: VideoInfo | None = None


@dataclass
class Sample:
    """One training example (see the module docstring).

    id: stable id (from the record, else derived from the file and index).
    source: ``file:line`` / ``file#row`` of the record, for error messages.
    messages: Qwen chat messages; for SFT the whole conversation including assistant turns, for GRPO
        the prompt only. Media items are ``{"type": "video"|"image", "video"|"image": path}`` in the
        same order as ``media``.
    media: the images/videos, in order of appearance.
    target: the reply the SFT loss trains on (last assistant turn), None for GRPO prompts.
    columns: reward columns (`REWARD_COLUMNS`) that apply to this sample.
    visuals: decoded media (one per ``media`` entry), filled by `with_visuals`.
    """

    id: str
    source: str
    messages: list[dict]
    media: list[MediaRef] = field(default_factory=list)
    target: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    visuals: list[Visual] | None = None

    def prompt_messages(self) -> list[dict]:
        """The conversation without its final assistant turn (what a policy is asked to continue)."""
        if self.messages and self.messages[-1].get("role") == "assistant":
            return self.messages[:-1]
        return list(self.messages)

    def with_visuals(self, decode: Callable[[MediaRef], Visual] | None = None) -> "Sample":
        """A copy with every media item decoded (`decode_media` by default).

        Raises `MediaError` for the first media that cannot be decoded.
        """
        decode = decode or decode_media
        return dataclasses.replace(self, visuals=[decode(m) for m in self.media])

    def _visuals(self, kind: str) -> list[Visual]:
        if self.visuals is None and self.media:
            raise RuntimeError(f"sample {self.id} ({self.source}): media not decoded; call with_visuals() first")
        return [v for v in self.visuals or [] if v.kind == kind]

    @property
    def image_grid_thw(self) -> torch.Tensor:
        """int64 [n_img, 3]."""
        return _stack_grids(self._visuals("image"))

    @property
    def video_grid_thw(self) -> torch.Tensor:
        """int64 [n_vid, 3]."""
        return _stack_grids(self._visuals("video"))

    @property
    def second_per_grid_ts(self) -> torch.Tensor:
        """float32 [n_vid] seconds per temporal patch of each video."""
        return torch.tensor([v.second_per_grid_t for v in self._visuals("video")], dtype=torch.float32)

    @property
    def pixel_values(self) -> torch.Tensor | None:
        """float32 [sum of image patches, 1176] or None without images."""
        return _cat_pixels(self._visuals("image"))

    @property
    def pixel_values_videos(self) -> torch.Tensor | None:
        """float32 [sum of video patches, 1176] or None without videos."""
        return _cat_pixels(self._visuals("video"))


def _cat_pixels(visuals: list[Visual]) -> torch.Tensor | None:
    # One item (the common case) is returned as is: a 128-frame video's pixels are ~200 MiB, and a
    # torch.cat copy of them would double a DataLoader worker's peak memory.
    if len(visuals) == 1:
        return visuals[0].pixel_values
    return torch.cat([v.pixel_values for v in visuals]) if visuals else None


def _stack_grids(visuals: list[Visual]) -> torch.Tensor:
    if not visuals:
        return torch.zeros(0, 3, dtype=torch.long)
    return torch.stack([v.grid_thw for v in visuals])


def decode_media(ref: MediaRef) -> Visual:
    """Sample, resize and patchify one media item (raises `MediaError` for bad files)."""
    if ref.kind == "image":
        image = load_image(ref.path if ref.path is not None else ref.data, **ref.options)
        pixel_values, grid = patchify_image(image)
        return Visual("image", pixel_values, grid, image)
    patches = VideoPatchStream()

    def overlaid(chunk: torch.Tensor, start: int, info: VideoInfo) -> None:
        from megatron_vrft.data.overlay import overlay_frames

        stamps = info.timestamps[start : start + len(chunk)]
        chunk.copy_(overlay_frames(chunk, stamps, ref.overlay, ref.subtitles))
        patches(chunk, start, info)

    on_chunk = overlaid if ref.overlay else patches
    # Patchify (and overlay) each chunk as it is resized, overlapping that work with decoding.
    frames, info = read_video(ref.path, on_chunk=on_chunk, **ref.options)
    pixel_values, grid, second_per_grid_t = patches.result()
    return Visual("video", pixel_values, grid, frames, second_per_grid_t, info)


def media_skip_reason(err: MediaError) -> str:
    return MEDIA_SKIP_REASONS.get(err.reason, f"{err.reason}_media")


@dataclass
class SkipReport:
    """Counts of skipped records (or samples) by reason, with a few examples per reason.

    ``total`` counts what was looked at, ``kept`` what survived; ``skipped`` is a Counter by reason.
    """

    name: str
    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(f"{where}: {detail}" if detail else where)

    def merge(self, other: "SkipReport") -> None:
        self.total += other.total
        self.kept += other.kept
        self.skipped.update(other.skipped)
        for reason, ex in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(ex[: max(0, self.max_examples - len(mine))])

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary_line(self) -> str:
        """One line, e.g. ``grpo.jsonl: 774 samples from 778 records; skipped 4 (missing_media=4)``."""
        line = f"{self.name}: {self.kept} samples from {self.total} records"
        if self.skipped:
            reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items()))
            line += f"; skipped {self.num_skipped} ({reasons})"
        return line

    def details(self) -> str:
        """Multi-line: the summary plus example locations per reason."""
        lines = [self.summary_line()]
        for reason in sorted(self.examples):
            lines += [f"  {reason}: {ex}" for ex in self.examples[reason]]
        return "\n".join(lines)

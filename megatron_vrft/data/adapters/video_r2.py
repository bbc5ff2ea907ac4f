"""``video_r2``: Video-R2 SFT/GRPO JSON (``video-r2-sft-dataset.json`` / ``video-r2-grpo-dataset.json``).

Record: ``{"id", "video": "<source>/<subset>/<id>.mp4", "conversations": [{"from": "human", "value":
"<video>\\nQ\\nA. …"}, {"from": "assistant", "value": "<think>…</think>\\n<answer>B. …</answer>"}],
"temporal_grounding"?: {"MM:SS" | "MM:SS-MM:SS" | "HH:MM:SS": sentence | null}, "key_frame"?}``.
The conversation layout is ``llava_conv``'s (speaker "assistant" instead of "gpt").

- Subtitles: ``<subtitles_root>/<video path relative to the media root, with .srt>``, used when
  present; the video path is the resolved one (media-root rules of ``_common``), so an absolute
  path under the media root maps like its relative form, and a subtitle path that would leave
  ``subtitles_root`` skips the record as ``path_escape``.
- Overlays (Video-R2's ``WRITE_TIMESTAMPS_ON_FRAMES`` / ``WRITE_SUBTITLES_ON_FRAMES``, both on in
  its scripts): ``overlay=("timestamps", "subtitles")`` by default; ``()`` turns them off.
- Sampling defaults: sft 1 fps, at most 128 frames; grpo 2 fps, at most 32 frames; 360*420 pixels.
Columns: ``solution``, ``answer``, ``question``, and for GRPO ``temporal_grounding`` (null
sentences dropped; None when nothing is left), which the TAR reward reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from megatron_vrft.data.adapters._common import LoadContext, read_json_any, require
from megatron_vrft.data.adapters.llava_conv import convert_conversation
from megatron_vrft.data.overlay import OVERLAYS
from megatron_vrft.data.sample import DataFormatError, Sample, SkipRecord

MODES = ("sft", "grpo")
VIDEO_DEFAULTS = {
    "sft": {"fps": 1.0, "max_frames": 128, "max_pixels": 360 * 420},
    "grpo": {"fps": 2.0, "max_frames": 32, "max_pixels": 360 * 420},
}


@dataclass
class Options:
    subtitles_root: str | None = None
    overlay: tuple[str, ...] = OVERLAYS
    system_prompt: str | None = None


def records(ctx: LoadContext, opts: Options):
    unknown = set(opts.overlay) - set(OVERLAYS)
    if unknown:
        raise DataFormatError(f"overlay must be a subset of {OVERLAYS}, got {sorted(unknown)}")
    return read_json_any(ctx.path)


def subtitles_path(video: str, ctx: LoadContext, subtitles_root: str) -> str:
    """The ``.srt`` of a resolved video path: its path relative to the media root (else the
    annotation file's directory) under ``subtitles_root``; raises SkipRecord("path_escape") when
    that lands outside ``subtitles_root`` (an absolute video path outside the base, without a media root)."""
    base = os.path.abspath(ctx.media_root if ctx.media_root is not None else ctx.path.parent)
    root = os.path.normpath(os.path.abspath(subtitles_root))
    srt = os.path.normpath(os.path.join(root, str(Path(os.path.relpath(video, base)).with_suffix(".srt"))))
    if os.path.commonpath([srt, root]) != root:
        raise SkipRecord("path_escape", f"subtitles of {video!r} resolve to {srt}, outside subtitles_root {root}")
    return srt


def convert(record: dict, where: str, ctx: LoadContext, opts: Options) -> list[Sample]:
    require(record, "video", str)
    sample = convert_conversation(record, where, ctx, opts.system_prompt, VIDEO_DEFAULTS[ctx.mode])
    for ref in sample.media:
        if ref.kind == "video":
            ref.subtitles = subtitles_path(ref.path, ctx, opts.subtitles_root) if opts.subtitles_root else None
            ref.overlay = tuple(opts.overlay)
    if ctx.mode == "grpo":
        grounding = record.get("temporal_grounding") or {}
        kept = {str(k): v for k, v in grounding.items() if isinstance(v, str) and v.strip()} if isinstance(
            grounding, dict) else {}
        sample.columns["temporal_grounding"] = kept or None
    return [sample]

"""Video-R2's frame overlays: the frame's timestamp top-left and the active subtitle cue at the bottom.

Video-R2 burns ``HH:MM:SS`` and the current ``.srt`` cue into sampled frames
(``WRITE_TIMESTAMPS_ON_FRAMES`` / ``WRITE_SUBTITLES_ON_FRAMES`` in its qwen-vl-utils copy) so that
the model's reasoning can cite ``MM:SS`` times. We draw on the already resized frames with PIL's
built-in bitmap font, so no font file is needed; the drawing happens before patchify, hence rollout
and training see the same pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

OVERLAYS = ("timestamps", "subtitles")
_SRT_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")


class SubtitleError(ValueError):
    """An ``.srt`` file that cannot be parsed (names the file and cue)."""


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def _seconds(match: re.Match) -> float:
    h, m, s, ms = match.groups()
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def parse_srt(path: str | Path) -> list[Cue]:
    """Cues of an ``.srt`` file (UTF-8, BOM tolerated), in file order."""
    text = Path(path).read_text(encoding="utf-8-sig", errors="replace")
    cues = []
    for block_no, block in enumerate(re.split(r"\r?\n\s*\r?\n", text.strip()), start=1):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        timing = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if timing is None:
            continue
        times = list(_SRT_TIME.finditer(lines[timing]))
        if len(times) != 2:
            raise SubtitleError(f"{path}: cue {block_no} has a malformed time line {lines[timing]!r}")
        cues.append(Cue(_seconds(times[0]), _seconds(times[1]), " ".join(lines[timing + 1:])))
    return cues


def hhmmss(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def overlay_frames(frames: torch.Tensor, timestamps, what: tuple[str, ...], srt_path: str | None = None) -> torch.Tensor:
    """Draw overlays on uint8 frames [T, 3, H, W]; ``timestamps`` are the frames' seconds (len T).

    ``what`` is a subset of `OVERLAYS`. Subtitles are drawn only when ``srt_path`` exists (Video-R2
    skips videos without an ``.srt``). Returns a new uint8 tensor of the same shape.
    """
    unknown = set(what) - set(OVERLAYS)
    if unknown:
        raise ValueError(f"unknown overlay(s) {sorted(unknown)}; choose from {OVERLAYS}")
    cues = parse_srt(srt_path) if "subtitles" in what and srt_path and Path(srt_path).is_file() else []
    out = []
    for frame, t in zip(frames.permute(0, 2, 3, 1).numpy(), timestamps):
        image = Image.fromarray(np.ascontiguousarray(frame))
        draw = ImageDraw.Draw(image)
        if "timestamps" in what:
            _label(draw, (2, 2), hhmmss(t))
        cue = next((c.text for c in cues if c.start <= t <= c.end), None)
        if cue:
            _label(draw, (2, image.height - 12), cue)
        out.append(torch.from_numpy(np.asarray(image).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).contiguous()


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str) -> None:
    # White text on a black box stays legible on any frame content.
    box = draw.textbbox(xy, text)
    draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255))

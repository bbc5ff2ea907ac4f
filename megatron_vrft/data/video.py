"""Video reading with qwen-vl-utils 0.0.14 `fetch_video` semantics, without torchvision.

`read_video(path, ...)` decodes only the sampled frames and returns them resized, as uint8
[T, 3, H, W], with a `VideoInfo` describing what was sampled. The rules, all from qwen-vl-utils
0.0.14 `vision_process.py` (`calculate_video_frame_range`, `smart_nframes`, `fetch_video`):

- frame range: without `video_start`/`video_end` the whole file; otherwise start = ceil(start*fps),
  end = min(floor(end*fps), total-1), both clamped to [0, total/fps] seconds first; start >= end is
  an error ("out_of_range").
- frame count: `nframes` (rounded to a multiple of 2) XOR `fps` (default 2.0): n = frames/fps_native*fps
  clamped to [min_frames (4), min(max_frames (768), frames)] and to frames, floored to a multiple of 2;
  n outside [2, frames] is an error ("too_short").
- indices `torch.linspace(start, end, n).round()` (float32, half-to-even, exactly as upstream);
  sample_fps = n / frames_in_range * fps_native.
- size: `smart_resize(H, W, 28, min_pixels, max_pixels')` with min_pixels default 128*28*28 and
  max_pixels' = min(max_pixels or inf, max(min(768*28*28, total_pixels/n*2), int(min_pixels*1.05))),
  total_pixels default MODEL_SEQ_LEN*28*28*0.9 (env MODEL_SEQ_LEN, default 128000, read per call).
- resize: torchvision's tensor BICUBIC with antialias (see `media.resize_frames`).

Backends (`video_backends.py`): decord first (what qwen-vl-utils uses when torchcodec is absent; its
frame numbering and pixels are the reference), PyAV when decord cannot open or decode the file. Only
the sampled frames are decoded, in chunks: chunk k+1 decodes on a helper thread while chunk k is
resized and handed to `on_chunk` (the decoders release the GIL), so the per-frame work after decoding
(resize, patchify, overlays) runs on a second core. Every failure that belongs to the file raises
`media.MediaError`.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from megatron_vrft.data.media import (
    IMAGE_FACTOR,
    MediaError,
    ceil_by_factor,
    floor_by_factor,
    resize_frames,
    round_by_factor,
    smart_resize,
)
from megatron_vrft.data.video_backends import SOURCES, BackendFailure, VideoMeta

logger = logging.getLogger(__name__)

FPS = 2.0
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * IMAGE_FACTOR**2  # 100,352
VIDEO_MAX_PIXELS = 768 * IMAGE_FACTOR**2  # 602,112
DEFAULT_MODEL_SEQ_LEN = 128000
DECODE_AHEAD = 2  # chunks decoding ahead of the one being resized
BACKENDS = ("decord", "pyav")


@dataclass(frozen=True)
class VideoInfo:
    """What `read_video` sampled. Indices and timestamps refer to the whole file, not the clip."""

    path: str
    fps: float  # native average frame rate
    total_frames: int  # frames in the whole file
    duration: float  # seconds of the whole file (total_frames / fps)
    width: int  # native frame width
    height: int  # native frame height
    frame_indices: tuple[int, ...]  # sampled frame numbers, len T
    timestamps: tuple[float, ...]  # frame_indices / fps, seconds, len T
    sample_fps: float  # n / frames_in_range * fps (what HF calls fps for second_per_grid_ts)
    video_backend: str  # "decord" or "pyav"


def model_seq_len() -> int:
    """qwen-vl-utils' MODEL_SEQ_LEN (env var, default 128000) that sets the default total_pixels."""
    return int(float(os.environ.get("MODEL_SEQ_LEN", DEFAULT_MODEL_SEQ_LEN)))


def frame_range(
    total_frames: int,
    video_fps: float,
    video_start: float | None = None,
    video_end: float | None = None,
    *,
    path: str | None = None,
) -> tuple[int, int, int]:
    """-> (start_frame, end_frame inclusive, frames_in_range), qwen-vl-utils `calculate_video_frame_range`."""
    if video_fps <= 0 or total_frames <= 0:
        raise MediaError(path, "empty", f"{total_frames} frames at {video_fps} fps")
    if video_start is None and video_end is None:
        return 0, total_frames - 1, total_frames
    max_duration = total_frames / video_fps
    start_frame = 0
    if video_start is not None:
        start_frame = math.ceil(max(0.0, min(video_start, max_duration)) * video_fps)
    end_frame = total_frames - 1
    if video_end is not None:
        end_frame = min(math.floor(max(0.0, min(video_end, max_duration)) * video_fps), total_frames - 1)
    if start_frame >= end_frame:
        raise MediaError(
            path,
            "out_of_range",
            f"video_start={video_start} video_end={video_end} select frames {start_frame}..{end_frame} "
            f"of a {max_duration:.2f}s video ({total_frames} frames @ {video_fps:g} fps)",
        )
    return start_frame, end_frame, end_frame - start_frame + 1


def smart_nframes(
    total_frames: int,
    video_fps: float,
    *,
    fps: float | None = None,
    nframes: int | None = None,
    min_frames: int | None = None,
    max_frames: int | None = None,
    path: str | None = None,
) -> int:
    """Number of frames to sample from `total_frames` (frames in range), qwen-vl-utils `smart_nframes`."""
    if fps is not None and nframes is not None:
        raise ValueError("read_video: pass either fps or nframes, not both")
    if nframes is not None:
        n = round_by_factor(nframes, FRAME_FACTOR)
    else:
        target_fps = FPS if fps is None else fps
        lo = ceil_by_factor(FPS_MIN_FRAMES if min_frames is None else min_frames, FRAME_FACTOR)
        hi = floor_by_factor(min(FPS_MAX_FRAMES, total_frames) if max_frames is None else max_frames, FRAME_FACTOR)
        n = total_frames / video_fps * target_fps
        n = floor_by_factor(min(min(max(n, lo), hi), total_frames), FRAME_FACTOR)
    if not FRAME_FACTOR <= n <= total_frames:
        raise MediaError(path, "too_short", f"need {n} frames (>= {FRAME_FACTOR}) but the range has {total_frames}")
    return n


def sample_indices(start_frame: int, end_frame: int, n: int) -> list[int]:
    """`torch.linspace(start, end, n).round()` in float32, bit-for-bit what qwen-vl-utils does."""
    return torch.linspace(start_frame, end_frame, n).round().long().tolist()


def video_frame_size(
    height: int,
    width: int,
    n: int,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    total_pixels: int | float | None = None,
    path: str | None = None,
) -> tuple[int, int]:
    """Resized (height, width) for `n` sampled frames of a height x width video (fetch_video's bounds)."""
    min_px = VIDEO_MIN_PIXELS if min_pixels is None else min_pixels
    total_px = model_seq_len() * IMAGE_FACTOR * IMAGE_FACTOR * 0.9 if total_pixels is None else total_pixels
    max_px = max(min(VIDEO_MAX_PIXELS, total_px / n * FRAME_FACTOR), int(min_px * 1.05))
    if max_pixels is not None:
        max_px = min(max_pixels, max_px)
    return smart_resize(height, width, IMAGE_FACTOR, min_px, max_px, path=path)


def _check_file(path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise MediaError(path, "missing")
    if p.stat().st_size == 0:
        raise MediaError(path, "empty", "zero-byte file")


def _backend_order(backend: str | None) -> tuple[str, ...]:
    if backend is None:
        return BACKENDS
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
    return (backend,)


# ---------------------------------------------------------------- public API


def _open_sources(path: str, order: tuple[str, ...], failures: list[str]):
    """Yield an open source per backend in `order`; backends that cannot open `path` add to `failures`."""
    for name in order:
        try:
            yield SOURCES[name](path)
        except BackendFailure as e:
            failures.append(str(e))


def probe_video(path: str | os.PathLike, *, backend: str | None = None) -> VideoMeta:
    """Frame count, fps, size and duration of a video, decoding at most one frame.

    `backend` forces "decord" or "pyav"; None tries decord then PyAV. Raises MediaError.
    """
    path = str(path)
    order = _backend_order(backend)
    _check_file(path)
    failures: list[str] = []
    for source in _open_sources(path, order, failures):
        source.close()
        return source.meta
    raise MediaError(path, "corrupt", "; ".join(failures))


def read_video(
    path: str | os.PathLike,
    *,
    fps: float | None = None,
    nframes: int | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    total_pixels: int | float | None = None,
    video_start: float | None = None,
    video_end: float | None = None,
    min_frames: int | None = None,
    max_frames: int | None = None,
    backend: str | None = None,
    on_chunk: Callable[[torch.Tensor, int, VideoInfo], None] | None = None,
) -> tuple[torch.Tensor, VideoInfo]:
    """Sample and resize frames like qwen-vl-utils 0.0.14 `fetch_video` (see module docstring).

    Returns (frames uint8 [T, 3, H', W'], info). T is even, H' and W' are multiples of 28.
    `fps` XOR `nframes`; `min_frames`/`max_frames` only apply with fps sampling (qwen-vl-utils keys).
    `backend` forces "decord" or "pyav" (default: decord, then PyAV on failure).
    `on_chunk(frames, start, info)`, when given, is called on the calling thread for consecutive
    chunks of the result (`frames` is the view `result[start:start + len]`, an even number of frames,
    writable in place) as soon as each is resized, while the next chunk is still decoding. If a
    backend fails midway and the next one takes over, the chunks are delivered again from start 0.
    Raises MediaError (missing/empty/corrupt/too_short/out_of_range/bad_aspect) for bad files and
    ValueError for invalid arguments.
    """
    path = str(path)
    if fps is not None and nframes is not None:
        raise ValueError(f"read_video({path}): pass either fps or nframes, not both")
    order = _backend_order(backend)
    _check_file(path)
    failures: list[str] = []
    for source in _open_sources(path, order, failures):
        try:
            meta = source.meta
            start, end, in_range = frame_range(meta.total_frames, meta.fps, video_start, video_end, path=path)
            n = smart_nframes(
                in_range, meta.fps, fps=fps, nframes=nframes, min_frames=min_frames, max_frames=max_frames, path=path
            )
            indices = sample_indices(start, end, n)
            height, width = video_frame_size(
                meta.height, meta.width, n, min_pixels=min_pixels, max_pixels=max_pixels,
                total_pixels=total_pixels, path=path,
            )
            info = VideoInfo(
                path=path,
                fps=meta.fps,
                total_frames=meta.total_frames,
                duration=meta.duration,
                width=meta.width,
                height=meta.height,
                frame_indices=tuple(indices),
                timestamps=tuple(i / meta.fps for i in indices),
                sample_fps=n / max(in_range, 1e-6) * meta.fps,
                video_backend=meta.backend,
            )
            frames = _decode_resized(source, info, height, width, on_chunk)
        except BackendFailure as e:
            logger.debug("%s: %s", path, e)
            failures.append(str(e))
            continue
        finally:
            source.close()
        return frames, info
    raise MediaError(path, "corrupt", "; ".join(failures))


def _decode_resized(source, info: VideoInfo, height: int, width: int, on_chunk) -> torch.Tensor:
    """Decode `info.frame_indices` and resize into one uint8 [T, 3, height, width] buffer.

    With a random-access source, chunks are decoded on a helper thread while the previous chunk is
    resized and passed to `on_chunk`: decoding keeps one core busy, the rest runs on another.
    """
    indices = list(info.frame_indices)
    out = torch.empty((len(indices), 3, height, width), dtype=torch.uint8)
    n = len(indices)
    starts = _chunk_starts(n, source.chunk_size) if source.chunk_size else [0, n]

    def finish(start: int, decoded: torch.Tensor) -> None:
        view = out[start : start + len(decoded)]
        resize_frames(decoded, height, width, out=view)
        if on_chunk is not None:
            on_chunk(view, start, info)

    if len(starts) == 2:
        finish(0, source.frames(indices))
        return out
    chunks = [indices[a:b] for a, b in zip(starts[:-1], starts[1:])]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-decode") as pool:
        # Two chunks queued ahead: the decoder never waits for the resize of the previous chunk,
        # and at most three chunks of decoded frames are held at once.
        pending = deque(pool.submit(source.frames, chunk) for chunk in chunks[:DECODE_AHEAD])
        try:
            for k in range(len(chunks)):
                decoded = pending.popleft().result()
                if k + DECODE_AHEAD < len(chunks):
                    pending.append(pool.submit(source.frames, chunks[k + DECODE_AHEAD]))
                finish(starts[k], decoded)
        finally:
            for future in pending:  # after a failure: do not decode chunks nobody will read
                future.cancel()
    return out


def _chunk_starts(n: int, step: int) -> list[int]:
    """Chunk boundaries [0, ..., n] for n frames: doubling from 2 up to `step`, then `step`, then halving.

    Nothing else runs while the first chunk decodes and only the last chunk's work cannot overlap a
    decode, so both ends use small chunks: sizes double from FRAME_FACTOR up to `step`, and the last
    up to 2*step frames go in chunks that halve down to FRAME_FACTOR (e.g. 50 frames, step 8:
    2, 4, 8, 8, 8, 8, 6, 4, 2; 16 frames: 2, 4, 6, 2, 2). Chunks stay even.
    """
    sizes = []
    size = FRAME_FACTOR
    while size < step and n >= 3 * size:
        sizes.append(size)
        n -= size
        size *= 2
    while n > 2 * step:
        sizes.append(step)
        n -= step
    while n > FRAME_FACTOR:
        half = ceil_by_factor(n / 2, FRAME_FACTOR)
        sizes.append(half)
        n -= half
    if n:
        sizes.append(n)
    return [0, *np.cumsum(sizes).tolist()]

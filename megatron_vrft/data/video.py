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

Backends: decord first (what qwen-vl-utils uses when torchcodec is absent), PyAV when decord cannot
open or decode the file. Only the sampled frames are decoded; with decord, chunk k+1 is decoded on a
helper thread while chunk k is resized (decord releases the GIL). The two backends can differ by a
few levels in YUV->RGB conversion; frame indices and sizes are the same. Every failure that belongs
to the file raises `media.MediaError`.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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

logger = logging.getLogger(__name__)

FPS = 2.0
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * IMAGE_FACTOR**2  # 100,352
VIDEO_MAX_PIXELS = 768 * IMAGE_FACTOR**2  # 602,112
DEFAULT_MODEL_SEQ_LEN = 128000
BACKENDS = ("decord", "pyav")
DECODE_CHUNK = 8  # frames per decord get_batch call; the next chunk decodes while this one is resized


@dataclass(frozen=True)
class VideoMeta:
    """Container-level facts about a video file (no frames decoded beyond the first)."""

    path: str
    fps: float  # native average frame rate
    total_frames: int
    width: int
    height: int
    backend: str  # "decord" or "pyav"

    @property
    def duration(self) -> float:
        """Seconds, as qwen-vl-utils computes it: total_frames / fps."""
        return self.total_frames / self.fps


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


# ---------------------------------------------------------------- backends


class _BackendFailure(Exception):
    """A backend could not open/decode the file; the next backend is tried."""


class _DecordSource:
    """decord.VideoReader: random access, so frames can be fetched chunk by chunk."""

    def __init__(self, path: str):
        import decord

        self._errors = (RuntimeError, AssertionError, decord.DECORDError)
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
        except self._errors as e:
            raise _BackendFailure(f"decord cannot open: {e}") from e
        first = self.frames([0])
        self.meta = VideoMeta(
            path, float(self._vr.get_avg_fps()), len(self._vr), int(first.shape[-1]), int(first.shape[-2]), "decord"
        )
        self.chunk_size = DECODE_CHUNK

    def frames(self, indices: list[int]) -> torch.Tensor:
        """-> uint8 [len(indices), 3, H, W] (a channels-last view of decord's buffer)."""
        try:
            arr = self._vr.get_batch(indices)
        except self._errors as e:
            raise _BackendFailure(f"decord cannot decode: {e}") from e
        # A global decord.bridge.set_bridge("torch") makes get_batch return a tensor already.
        hwc = arr if isinstance(arr, torch.Tensor) else torch.from_numpy(arr.asnumpy())
        return hwc.permute(0, 3, 1, 2)

    def close(self) -> None:
        del self._vr


class _PyAVSource:
    """PyAV: sequential decoding, so all wanted frames are picked up in one pass."""

    def __init__(self, path: str):
        import av

        self._av = av
        try:
            self._container = av.open(path)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise _BackendFailure(f"pyav cannot open: {e}") from e
        try:
            if not self._container.streams.video:
                raise MediaError(path, "empty", "no video stream")
            self._stream = self._container.streams.video[0]
            self.meta = self._read_meta(path)
        except BaseException:
            self._container.close()
            raise
        self.chunk_size = None  # one pass over the file

    def _read_meta(self, path: str) -> VideoMeta:
        stream = self._stream
        rate = stream.average_rate or stream.guessed_rate
        total = stream.frames
        if not total:
            # Containers without a frame count (e.g. some mkv/webm): count packets, which needs no decoding.
            try:
                total = sum(1 for packet in self._container.demux(stream) if packet.size)
                self._container.seek(0)
            except self._av.FFmpegError as e:
                raise _BackendFailure(f"pyav cannot demux: {e}") from e
        ctx = stream.codec_context
        return VideoMeta(path, float(rate or 0.0), int(total), ctx.width, ctx.height, "pyav")

    def frames(self, indices: list[int]) -> torch.Tensor:
        """Decode from the start and keep the wanted frames (decode order == presentation order)."""
        self._stream.thread_type = "AUTO"
        wanted: dict[int, list[int]] = {}
        for pos, idx in enumerate(indices):
            wanted.setdefault(idx, []).append(pos)
        out: list[np.ndarray | None] = [None] * len(indices)
        last = max(indices)
        try:
            for i, frame in enumerate(self._container.decode(self._stream)):
                if i in wanted:
                    rgb = frame.to_ndarray(format="rgb24")
                    for pos in wanted[i]:
                        out[pos] = rgb
                if i >= last:
                    break
        except self._av.FFmpegError as e:
            raise _BackendFailure(f"pyav cannot decode: {e}") from e
        missing = [indices[p] for p, a in enumerate(out) if a is None]
        if missing:
            raise _BackendFailure(f"pyav decoded too few frames: frame {missing[0]} absent")
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)

    def close(self) -> None:
        self._container.close()


_SOURCES = {"decord": _DecordSource, "pyav": _PyAVSource}


def _backend_order(backend: str | None) -> tuple[str, ...]:
    if backend is None:
        return BACKENDS
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
    return (backend,)


# ---------------------------------------------------------------- public API


def probe_video(path: str | os.PathLike, *, backend: str | None = None) -> VideoMeta:
    """Frame count, fps, size and duration of a video, decoding at most one frame.

    `backend` forces "decord" or "pyav"; None tries decord then PyAV. Raises MediaError.
    """
    path = str(path)
    order = _backend_order(backend)
    _check_file(path)
    failures = []
    for name in order:
        try:
            source = _SOURCES[name](path)
        except _BackendFailure as e:
            failures.append(str(e))
            continue
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
) -> tuple[torch.Tensor, VideoInfo]:
    """Sample and resize frames like qwen-vl-utils 0.0.14 `fetch_video` (see module docstring).

    Returns (frames uint8 [T, 3, H', W'], info). T is even, H' and W' are multiples of 28.
    `fps` XOR `nframes`; `min_frames`/`max_frames` only apply with fps sampling (qwen-vl-utils keys).
    `backend` forces "decord" or "pyav" (default: decord, then PyAV on failure).
    Raises MediaError (missing/empty/corrupt/too_short/out_of_range/bad_aspect) for bad files and
    ValueError for invalid arguments.
    """
    path = str(path)
    if fps is not None and nframes is not None:
        raise ValueError(f"read_video({path}): pass either fps or nframes, not both")
    order = _backend_order(backend)
    _check_file(path)
    failures = []
    for name in order:
        try:
            source = _SOURCES[name](path)
        except _BackendFailure as e:
            failures.append(str(e))
            continue
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
            frames = _decode_resized(source, indices, height, width)
        except _BackendFailure as e:
            logger.debug("%s: %s", path, e)
            failures.append(str(e))
            continue
        finally:
            source.close()
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
        return frames, info
    raise MediaError(path, "corrupt", "; ".join(failures))


def _decode_resized(source, indices: list[int], height: int, width: int) -> torch.Tensor:
    """Decode `indices` and resize into one uint8 [T, 3, height, width] buffer.

    With a random-access source, chunks are decoded on a helper thread while the previous chunk is
    resized: decoding keeps about one core busy, so the resize runs on the otherwise idle ones.
    """
    step = source.chunk_size or len(indices)
    chunks = [indices[i : i + step] for i in range(0, len(indices), step)]
    out = torch.empty((len(indices), 3, height, width), dtype=torch.uint8)
    if len(chunks) == 1:
        return resize_frames(source.frames(indices), height, width, out=out)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-decode") as pool:
        pending = pool.submit(source.frames, chunks[0])
        pos = 0
        for k, chunk in enumerate(chunks):
            decoded = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(source.frames, chunks[k + 1])
            resize_frames(decoded, height, width, out=out[pos : pos + len(chunk)])
            pos += len(chunk)
    return out

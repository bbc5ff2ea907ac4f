"""Video decoding backends behind `read_video`: decord (the reference) and PyAV.

decord is what qwen-vl-utils 0.0.14 decodes with (when torchcodec is absent), so its frame numbering
and RGB pixels are the reference. Each source opens one file and hands out frames by index:

- `DecordSource`: decord's index (frame i = the i-th frame in presentation order, `len(vr)` frames)
  and decord's pixels. It decodes through PyAV when that gives the same frames (`TimedPyAV`), because
  PyAV's sequential decoding is ~25% cheaper than decord's `get_batch`, and falls back to decord's
  own `get_batch` for the rest of the file as soon as anything disagrees.
- `PyAVSource`: the fallback for files decord cannot open or decode; frames are counted in decode
  (= presentation) order.

`TimedPyAV` proves it returns decord's frames instead of assuming it: each decoded frame is matched
to decord's index by its presentation time (decord's `get_frame_timestamp`), so frame numbering can
never drift, and the first frame it converts is compared pixel for pixel with decord's conversion of
the same frame (same YUV -> RGB matrix, range and chroma handling), which is what differs when the two
libraries disagree (e.g. full-range or 10-bit streams). Seeks go to decord's key frames
(`get_key_indices`), as decord does for sparse sampling.

Every failure that belongs to the file raises `BackendFailure` (the next backend is tried) or
`MediaError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from megatron_vrft.data.media import MediaError

logger = logging.getLogger(__name__)

# One FFmpeg decode thread: the resize/patchify of the previous chunk runs on another core, and
# DataLoader workers are parallel already (decord's default, FFmpeg's choice, burns ~1.4 cores on a
# 2-core box and starves that work). Frame threading never changes decoded pixels.
DECODE_THREADS = 1
DECODE_CHUNK = 8  # frames per `frames()` call (even); the next chunk decodes while this one is resized


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


class BackendFailure(Exception):
    """A backend could not open/decode the file; the next backend is tried."""


class Mismatch(Exception):
    """PyAV would not return exactly decord's frame; decord decodes the rest."""


class TimedPyAV:
    """Sequential PyAV decoding that returns decord's frames, matched by presentation time.

    `times` are decord's frame start times (seconds, float32 as decord reports them), `keys` its key
    frame indices, `first` decord's RGB frame 0 (uint8 [H, W, 3]). `frames()` raises `Mismatch` when a
    decoded frame has no unique decord counterpart or the pixels of the first one differ.
    """

    def __init__(self, path: str, times: np.ndarray, keys: list[int], first: np.ndarray):
        import av

        self._av = av
        self._container = av.open(path)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = DECODE_THREADS
        self._times = times.astype(np.float64)
        # float32 seconds: allow a few ulps of the largest time, and never more than a quarter frame.
        gaps = np.diff(self._times)
        tol = max(1e-6, 4 * float(np.spacing(np.float32(self._times[-1]))))
        if len(gaps) and (gaps.min() <= 4 * tol):
            raise Mismatch("decord frame times are not distinct enough to match frames by time")
        self._tol = tol
        self._keys = np.asarray(sorted(keys) or [0])
        self._first = first
        self._decoded = None  # iterator over PyAV frames, positioned after frame self._pos
        self._pos = -1
        self._pixels_checked = False

    def _index_of(self, seconds: float) -> int:
        j = int(np.searchsorted(self._times, seconds))
        for k in (j - 1, j):
            if 0 <= k < len(self._times) and abs(self._times[k] - seconds) <= self._tol:
                return k
        raise Mismatch(f"PyAV frame at {seconds:.6f}s has no decord frame")

    def _seek(self, index: int) -> None:
        key = int(self._keys[np.searchsorted(self._keys, index, side="right") - 1])
        if self._decoded is not None and self._pos < index and (key <= self._pos + 1):
            return  # decoding on from here is cheaper than seeking back to the same key frame
        offset = self._stream.time_base
        self._container.seek(int(round(self._times[key] / offset)), stream=self._stream, backward=True)
        self._decoded = iter(self._container.decode(self._stream))
        self._pos = -1

    def frames(self, indices: list[int]) -> np.ndarray:
        """-> uint8 [len(indices), H, W, 3], decord's RGB frames `indices` (ascending)."""
        out = []
        for index in indices:
            if index <= self._pos or self._decoded is None or index > self._pos + 1:
                self._seek(index)
            for frame in self._decoded:
                if frame.time is None:
                    raise Mismatch("PyAV frame without a timestamp")
                self._pos = self._index_of(frame.time)
                if self._pos >= index:
                    break
            else:
                raise Mismatch(f"PyAV ran out of frames before decord frame {index}")
            if self._pos != index:
                raise Mismatch(f"PyAV skipped decord frame {index}")
            rgb = frame.to_ndarray(format="rgb24")
            if not self._pixels_checked:
                reference = self._first if index == 0 else None
                if reference is None:
                    raise Mismatch("pixel check needs frame 0 first")
                if rgb.shape != reference.shape or not np.array_equal(rgb, reference):
                    raise Mismatch("PyAV's RGB conversion differs from decord's for this file")
                self._pixels_checked = True
            out.append(rgb)
        return np.stack(out)

    def close(self) -> None:
        self._container.close()


class DecordSource:
    """decord.VideoReader: random access, so frames can be fetched chunk by chunk."""

    def __init__(self, path: str):
        import decord

        self._path = path
        self._errors = (RuntimeError, AssertionError, decord.DECORDError)
        self._vr = self._open()
        first = self._decord_frames([0])
        self._first = first[0]
        self.meta = VideoMeta(
            path, float(self._vr.get_avg_fps()), len(self._vr), int(first.shape[2]), int(first.shape[1]), "decord"
        )
        self.chunk_size = DECODE_CHUNK
        self._fast: TimedPyAV | None = None
        self._fast_tried = False

    def _open(self):
        import decord

        try:
            return decord.VideoReader(self._path, ctx=decord.cpu(0), num_threads=DECODE_THREADS)
        except self._errors as e:
            raise BackendFailure(f"decord cannot open: {e}") from e

    def _decord_frames(self, indices: list[int]) -> np.ndarray:
        if self._vr is None:
            self._vr = self._open()
        try:
            arr = self._vr.get_batch(indices)
        except self._errors as e:
            raise BackendFailure(f"decord cannot decode: {e}") from e
        # A global decord.bridge.set_bridge("torch") makes get_batch return a tensor already.
        return arr.numpy() if isinstance(arr, torch.Tensor) else arr.asnumpy()

    def _fast_source(self, start: int) -> TimedPyAV | None:
        """PyAV for this file, set up on the first read from frame 0 (the pixel check needs it)."""
        if not self._fast_tried:
            self._fast_tried = True
            if start == 0:
                try:
                    times = self._vr.get_frame_timestamp(np.arange(len(self._vr)))[:, 0]
                    self._fast = TimedPyAV(self._path, times, list(self._vr.get_key_indices()), self._first)
                except Exception as e:  # any PyAV/decord hiccup only costs the faster path
                    logger.debug("%s: decoding with decord only (%s)", self._path, e)
                else:
                    # An open VideoReader keeps decoding ahead on its own thread (~50% more CPU for
                    # the whole read); it is reopened only if PyAV has to hand over.
                    self._vr = None
        return self._fast

    def frames(self, indices: list[int]) -> torch.Tensor:
        """-> uint8 [len(indices), 3, H, W] (a channels-last view), decord's frames `indices`."""
        fast = self._fast_source(indices[0])
        if fast is not None:
            try:
                return torch.from_numpy(fast.frames(indices)).permute(0, 3, 1, 2)
            except Exception as e:  # Mismatch, or any PyAV error: decord has the last word on this file
                logger.debug("%s: decord decodes the rest (%s)", self._path, e)
                fast.close()
                self._fast = None
        return torch.from_numpy(self._decord_frames(indices)).permute(0, 3, 1, 2)

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        self._vr = None


class PyAVSource:
    """PyAV: sequential decoding, continuing from chunk to chunk (restarting only to go back)."""

    def __init__(self, path: str):
        import av

        self._av = av
        try:
            self._container = av.open(path)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise BackendFailure(f"pyav cannot open: {e}") from e
        try:
            if not self._container.streams.video:
                raise MediaError(path, "empty", "no video stream")
            self._stream = self._container.streams.video[0]
            self.meta = self._read_meta(path)
        except BaseException:
            self._container.close()
            raise
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = DECODE_THREADS
        self.chunk_size = DECODE_CHUNK
        self._decoded = None
        self._next = 0  # index of the frame the iterator yields next

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
                raise BackendFailure(f"pyav cannot demux: {e}") from e
        ctx = stream.codec_context
        return VideoMeta(path, float(rate or 0.0), int(total), ctx.width, ctx.height, "pyav")

    def frames(self, indices: list[int]) -> torch.Tensor:
        """Frames `indices` (ascending) counted in decode order == presentation order."""
        out = []
        try:
            for index in indices:
                if self._decoded is None or index < self._next:
                    self._container.seek(0)
                    self._decoded, self._next = iter(self._container.decode(self._stream)), 0
                for frame in self._decoded:
                    self._next += 1
                    if self._next > index:
                        out.append(frame.to_ndarray(format="rgb24"))
                        break
                else:
                    raise BackendFailure(f"pyav decoded too few frames: frame {index} absent")
        except self._av.FFmpegError as e:
            raise BackendFailure(f"pyav cannot decode: {e}") from e
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)

    def close(self) -> None:
        self._container.close()


SOURCES = {"decord": DecordSource, "pyav": PyAVSource}

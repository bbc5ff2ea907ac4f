"""Video decoding backends behind `read_video`: decord (the reference) and PyAV (the fallback).

decord is what qwen-vl-utils 0.0.14 decodes with (when torchcodec is absent), so its frame numbering
and RGB pixels are the reference. Each source opens one file, reports `VideoMeta`, and hands out
frames by ascending index, a chunk per `frames()` call, with one FFmpeg decode thread:

- `DecordSource`: random access through `VideoReader.get_batch` (decord seeks to key frames).
- `PyAVSource`: for files decord cannot open or decode; sequential decoding that continues from
  chunk to chunk, frames counted in decode (= presentation) order. Its YUV->RGB conversion can
  differ from decord's by a few levels on some streams.

Every failure that belongs to the file raises `BackendFailure` (the next backend is tried) or
`MediaError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron_vrft.data.media import MediaError

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


class DecordSource:
    """decord.VideoReader: random access, so frames can be fetched chunk by chunk."""

    def __init__(self, path: str):
        import decord

        self._errors = (RuntimeError, AssertionError, decord.DECORDError)
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=DECODE_THREADS)
        except self._errors as e:
            raise BackendFailure(f"decord cannot open: {e}") from e
        first = self._decord_frames([0])
        # Kept for the first chunk, which usually starts at frame 0: asking decord for it again
        # would seek back and decode it twice (~4% of a 50-frame read).
        self._first: np.ndarray | None = first
        self.meta = VideoMeta(
            path, float(self._vr.get_avg_fps()), len(self._vr), int(first.shape[2]), int(first.shape[1]), "decord"
        )
        self.chunk_size = DECODE_CHUNK

    def _decord_frames(self, indices: list[int]) -> np.ndarray:
        try:
            arr = self._vr.get_batch(indices)
        except self._errors as e:
            raise BackendFailure(f"decord cannot decode: {e}") from e
        # A global decord.bridge.set_bridge("torch") makes get_batch return a tensor already.
        return arr.numpy() if isinstance(arr, torch.Tensor) else arr.asnumpy()

    def frames(self, indices: list[int]) -> torch.Tensor:
        """-> uint8 [len(indices), 3, H, W] (a channels-last view of decord's buffer)."""
        first, self._first = self._first, None
        if first is not None and indices[0] == 0:
            rest = [self._decord_frames(indices[1:])] if len(indices) > 1 else []
            return torch.from_numpy(np.concatenate([first, *rest])).permute(0, 3, 1, 2)
        return torch.from_numpy(self._decord_frames(indices)).permute(0, 3, 1, 2)

    def close(self) -> None:
        self._vr = self._first = None


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

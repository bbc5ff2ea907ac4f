"""Test helper: write small H.264 mp4s whose frames encode their own index, and read the index back.

Frame i is split into a left and a right half of flat grey: left = 16 + 8*(i % 28), right =
16 + 8*(i // 28). Flat areas survive yuv420 + H.264 within a couple of levels, so the index of a decoded
(and even resized) frame can be recovered from the centres of the two halves, for up to 784 frames.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch

_STEP = 8
_BASE = 16
_RADIX = 28


def frame_pattern(index: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 [height, width, 3] for frame `index`."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:, : width // 2] = _BASE + _STEP * (index % _RADIX)
    img[:, width // 2 :] = _BASE + _STEP * (index // _RADIX)
    return img


def write_mp4(path: str | Path, n_frames: int, fps: int = 10, width: int = 64, height: int = 48) -> Path:
    """Encode `n_frames` index-pattern frames at a constant `fps` (H.264, yuv420p, keyframe every 12)."""
    if n_frames >= _RADIX * _RADIX:
        raise ValueError(f"write_mp4: at most {_RADIX * _RADIX - 1} frames are encodable, got {n_frames}")
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": "12", "preset": "ultrafast", "crf": "18"}
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, width, height), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_ids(frames: torch.Tensor) -> list[int]:
    """Recover the encoded index of each frame of uint8 [T, 3, H, W] (any size after resizing)."""
    _, _, h, w = frames.shape
    left = frames[:, :, h // 2, w // 4].float().mean(dim=1)
    right = frames[:, :, h // 2, (3 * w) // 4].float().mean(dim=1)
    lo = ((left - _BASE) / _STEP).round().long()
    hi = ((right - _BASE) / _STEP).round().long()
    return (lo + _RADIX * hi).tolist()

"""Shared media rules: the typed media error, qwen-vl-utils' size rules, the frame resize, and images.

Everything here reproduces qwen-vl-utils 0.0.14 (`vision_process.py`) so that a model fine-tuned
through this pipeline sees the same pixels it would see through the reference `process_vision_info`:

- `smart_resize` is qwen-vl-utils' version (it differs from transformers' copy in corner cases:
  qwen-vl-utils clamps the *rounded* size to at least one factor, transformers clamps the floored one).
- `resize_frames` is what `torchvision.transforms.functional.resize(uint8, BICUBIC, antialias=True)`
  executes on a tensor (torchvision 0.2x `_functional_tensor.resize`): cast to float32,
  `interpolate(bicubic, align_corners=False, antialias=True)`, clamp to [0, 255], round, cast back to
  uint8, and return the input untouched when the size does not change. These are the same torch ops,
  so the result is bit-identical for a given torch version (torchvision is not installable here).
- `load_image` follows `fetch_image`: RGBA is composited on white, everything else is
  `convert("RGB")`, then PIL `resize` with its default filter, which is BICUBIC for RGB images.

Bad media never raises a bare library exception: it raises `MediaError(path, reason, detail)` with a
short machine-readable `reason` (see `MEDIA_ERROR_REASONS`) that the data loader counts and skips.
Misuse of the API (e.g. passing both `fps` and `nframes`) raises a plain `ValueError` instead, because
it is a configuration bug that must stop the run, not a property of one file.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from megatron_vrft.data.resample import bicubic_aa

# qwen-vl-utils 0.0.14 constants (vision_process.py). Pixel bounds are token counts times factor**2.
PATCH_SIZE = 14
SPATIAL_MERGE_SIZE = 2
IMAGE_FACTOR = PATCH_SIZE * SPATIAL_MERGE_SIZE  # 28
MAX_RATIO = 200
IMAGE_MIN_PIXELS = 4 * IMAGE_FACTOR**2  # 3,136
IMAGE_MAX_PIXELS = 16384 * IMAGE_FACTOR**2  # 12,845,056
RESIZE_CHUNK = 4  # frames per interpolate call in resize_frames

# Short reasons a data loader can count; keep them stable, they end up in skip reports.
MEDIA_ERROR_REASONS = (
    "missing",  # the path does not exist
    "empty",  # zero-byte file, no video stream, or zero decodable frames
    "corrupt",  # no backend can open or decode the file
    "too_short",  # fewer frames than the sampling rule needs (qwen-vl-utils: nframes outside [2, total])
    "out_of_range",  # video_start/video_end select no frames of this file
    "bad_aspect",  # aspect ratio above MAX_RATIO (qwen-vl-utils refuses these)
    "too_large",  # an image above PIL's decompression-bomb limit (2 * Image.MAX_IMAGE_PIXELS)
)


class MediaError(ValueError):
    """A media file that cannot be turned into model inputs; the sample using it should be skipped.

    Attributes: `path` (str), `reason` (one of MEDIA_ERROR_REASONS), `detail` (human-readable).
    """

    def __init__(self, path: str | os.PathLike | None, reason: str, detail: str = ""):
        if reason not in MEDIA_ERROR_REASONS:
            raise ValueError(f"unknown MediaError reason {reason!r}; expected one of {MEDIA_ERROR_REASONS}")
        self.path = "<bytes>" if path is None else str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):
        # Picklable across DataLoader worker processes (the default would re-call __init__ with args).
        return (MediaError, (self.path, self.reason, self.detail))


def round_by_factor(number: float, factor: int) -> int:
    """Closest multiple of `factor` (Python's round: halves go to the even multiple, as upstream)."""
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: int | float | None = None,
    max_pixels: int | float | None = None,
    *,
    path: str | os.PathLike | None = None,
) -> tuple[int, int]:
    """(height, width) -> (h_bar, w_bar): multiples of `factor`, area within [min_pixels, max_pixels].

    qwen-vl-utils 0.0.14 `smart_resize`; defaults are the image bounds. An aspect ratio above 200
    raises MediaError("bad_aspect") naming `path`; max_pixels < min_pixels raises ValueError.
    """
    max_pixels = IMAGE_MAX_PIXELS if max_pixels is None else max_pixels
    min_pixels = IMAGE_MIN_PIXELS if min_pixels is None else min_pixels
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")
    if min(height, width) <= 0:
        raise MediaError(path, "empty", f"frame size {width}x{height}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise MediaError(path, "bad_aspect", f"aspect ratio {ratio:.1f} > {MAX_RATIO} ({width}x{height})")
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = floor_by_factor(height / beta, factor)
        w_bar = floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def resize_frames(
    frames: torch.Tensor, height: int, width: int, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 [T, 3, H, W] -> uint8 [T, 3, height, width] with torchvision's tensor BICUBIC + antialias.

    Returns `frames` itself when the size is unchanged and no `out` is given (torchvision returns its
    input then too). `out` (uint8 [T, 3, height, width]) receives the result when given.
    Frames are resized RESIZE_CHUNK at a time: each frame is resampled independently, so chunking
    does not change a value, and it keeps the float temporaries small enough to stay in cache and
    be reused by the allocator instead of page-faulting fresh memory for every video.
    The input memory layout (e.g. decord's channels-last view) does not change the result either.
    The two casts run in numpy: exact conversions both (uint8 -> float32; float32 holding integers
    in [0, 255] -> uint8), and several times faster than torch's on a strided or narrowing copy.
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4:
        raise ValueError(f"resize_frames expects uint8 [T, C, H, W], got {frames.dtype} {tuple(frames.shape)}")
    if tuple(frames.shape[-2:]) == (height, width):
        return frames if out is None else out.copy_(frames)
    if out is None:
        out = torch.empty((frames.shape[0], frames.shape[1], height, width), dtype=torch.uint8)
    src, dst = frames.numpy(), out.numpy()
    for start in range(0, frames.shape[0], RESIZE_CHUNK):
        chunk = src[start : start + RESIZE_CHUNK]
        x = np.empty(chunk.shape, dtype=np.float32)
        np.copyto(x, chunk)
        y = bicubic_aa(torch.from_numpy(x), height, width)
        np.copyto(dst[start : start + RESIZE_CHUNK], y.clamp_(0, 255).round_().numpy(), casting="unsafe")
    return out


def _open_image(path_or_bytes: str | os.PathLike | bytes) -> tuple[Image.Image, str | None]:
    """Open and fully decode an image (PIL is lazy: truncation only shows on load)."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        name, data = None, bytes(path_or_bytes)
        if not data:
            raise MediaError(name, "empty", "zero bytes")
        source = io.BytesIO(data)
    else:
        name = str(path_or_bytes)
        path = Path(name)
        if not path.is_file():
            raise MediaError(name, "missing")
        if path.stat().st_size == 0:
            raise MediaError(name, "empty", "zero-byte file")
        source = path
    try:
        image = Image.open(source)
        image.load()
    except Image.DecompressionBombError as e:
        raise MediaError(name, "too_large", str(e)) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(name, "corrupt", f"{type(e).__name__}: {e}") from e
    return image, name


def _to_rgb(image: Image.Image) -> Image.Image:
    # qwen-vl-utils `to_rgb`: transparent pixels become white rather than PIL's black.
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def load_image(
    path_or_bytes: str | os.PathLike | bytes,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Image file (path or encoded bytes) -> uint8 [3, H, W], H and W multiples of 28.

    qwen-vl-utils `fetch_image` semantics: RGB conversion, `smart_resize` within
    [min_pixels, max_pixels] (defaults 4*28*28 and 16384*28*28), PIL bicubic resize.
    """
    image, name = _open_image(path_or_bytes)
    image = _to_rgb(image)
    width, height = image.size
    h_bar, w_bar = smart_resize(height, width, IMAGE_FACTOR, min_pixels, max_pixels, path=name)
    # Explicit BICUBIC == PIL's default filter for RGB images, which is what fetch_image relies on.
    image = image.resize((w_bar, h_bar), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()

"""GRPO prompts through the real data path, for rollout-engine tests and benchmarks.

`tiny_prompt_items(root, tokenizer, rope)` writes a noise PNG and two small mp4s under ``root``, a
``llava_conv`` dataset file, loads it with ``load_samples(mode="grpo")`` and returns
``data.loader.LoadedItem``s exactly as a GRPO DataLoader worker would (``Sample.with_visuals()`` +
``encode_sample(prompt_only=True)``), keyed by name:

- ``text``: no media;
- ``image``: a 56x84 px noise image (grid 1x4x6, 6 tokens);
- ``video``: 48 frames at 8 fps sampled at 2 fps -> 12 frames of 56x56 -> grid 6x4x4: a temporal
  extent (t ids up to 10) larger than the spatial one, where transformers 5.23's own rope index
  places the following text differently from the project (and vLLM);
- ``both``: the image, then the video, in one prompt;
- ``clip``: the same video cut to 1.0-4.5 s (``video_start`` / ``video_end``): frames in range <
  frames in the file, so ``sample_fps`` is not ``n / total_frames * fps``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
from PIL import Image

__all__ = ["tiny_prompt_items", "write_noise_mp4"]

VIDEO_OPTIONS = {"fps": 2.0, "min_pixels": 56 * 56, "max_pixels": 56 * 56}
IMAGE_OPTIONS = {"min_pixels": 56 * 56, "max_pixels": 56 * 84}


def write_noise_mp4(path: Path, n_frames: int, fps: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Smooth random colour blobs (H.264 keeps them close to the source), ``n_frames`` at ``fps``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n_frames, size // 8, size // 8, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18", "g": "8"}
        for frame in base:
            img = np.ascontiguousarray(frame.repeat(8, 0).repeat(8, 1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _conv(question: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": "<answer>blue</answer>"}]


def tiny_prompt_items(root: str | Path, tokenizer, rope) -> dict:
    """name -> `LoadedItem` (see the module docstring); ``rope``: a `RopeIndexConfig`."""
    from megatron_vrft.data import load_samples
    from megatron_vrft.data.loader import LoadedItem, SampleDataset

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_noise_mp4(root / "long.mp4", 48)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(root / "noise.png")
    records = [
        {"id": "text", "conversations": _conv("Name a colour.")},
        {"id": "image", "image": "noise.png", "conversations": _conv("<image>\nWhat is it?")},
        {"id": "video", "video": "long.mp4", "conversations": _conv("<video>\nWhat moves?")},
        {"id": "both", "image": "noise.png", "video": "long.mp4",
         "conversations": _conv("<image> and <video>: the same colours?")},
    ]
    (root / "prompts.json").write_text(json.dumps(records))
    samples, report = load_samples(root / "prompts.json", "llava_conv", root, mode="grpo",
                                   video_options=VIDEO_OPTIONS, image_options=IMAGE_OPTIONS)
    if report.num_skipped or [s.id for s in samples] != [r["id"] for r in records]:
        raise RuntimeError(f"tiny prompts did not load as written: {report.details()}")
    video = samples[2]
    (ref,) = video.media
    clip_ref = dataclasses.replace(ref, options={**ref.options, "video_start": 1.0, "video_end": 4.5})
    samples.append(dataclasses.replace(video, id="clip", media=[clip_ref]))
    dataset = SampleDataset(samples, tokenizer, rope, task="grpo")
    items = {}
    for i, s in enumerate(samples):
        item: LoadedItem = dataset[(i, i)]
        if not item.ok:
            raise RuntimeError(f"tiny prompt {s.id}: {item.skip_reason} {item.skip_detail}")
        items[s.id] = item
    return items

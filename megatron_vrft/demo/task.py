"""The CPU demo's synthetic video task: tank-level anomaly detection in seed 000's format.

Every clip shows a tank of liquid seen from the side. The tank should be filling up, so a rising
level is ``normal`` and a falling one ``abnormal``; the model answers
``<think>the level rises|falls</think><answer>normal|abnormal</answer>``. What makes it a video task
and not a trivial one:

- the label is the direction of change: an abnormal clip is a normal one played backwards (same
  random draw), so the frames as a set carry no information about the label, only their order;
- the tank's size and place, all colours (floor, wall, liquid, empty part, clutter), the speed and
  the starting level are random per clip, and every frame gets pixel noise, so no colour, size or
  position cue correlates with the label;
- a lamp blinks at random in every clip: temporal change the model must learn to ignore;
- the question text is the same for every clip, and labels are exactly balanced in every split.

A random tiny model has to learn, from pixels, to compare the liquid's extent across frames.

Layout written by `make_demo_task(out)` (seed 000's ``llava_conv`` JSON, Qwen-VL-Series-Finetune):

    out/videos/{sft,grpo,heldout}_NNNN.mp4    H.264, SIZE x SIZE px, FRAMES frames at FPS
    out/sft.json       SFT warm-up: conversation with the reply "<think>...</think><answer>label</answer>"
    out/grpo.json      GRPO prompts (same records; the adapter's grpo mode keeps the reply as `solution`)
    out/heldout.json   held-out prompts, never trained on, for the base/SFT/GRPO table
    out/task.json      what was written (seed, sizes, label counts per split)

Everything is a pure function of ``seed``: the same seed writes the same records and pixels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

LABELS = ("normal", "abnormal")
QUESTION = "The tank should be filling up. Is this normal or abnormal?"
SPLITS = ("sft", "grpo", "heldout")
# Video sampling every demo config uses: all FRAMES frames at SIZE x SIZE (no resize).
FPS = 4
FRAMES = 8
SIZE = 56
VIDEO_OPTIONS = {"nframes": FRAMES, "min_pixels": SIZE * SIZE, "max_pixels": SIZE * SIZE}
NOISE = 12  # +- per pixel and channel, every frame


@dataclass
class TaskSizes:
    sft: int = 128
    grpo: int = 512
    heldout: int = 200

    def __post_init__(self):
        for split in SPLITS:
            n = getattr(self, split)
            if n < 2 or n % 2:
                raise ValueError(f"demo task: {split} size must be an even number >= 2 (balanced labels), got {n}")


def reply(label: str) -> str:
    """The SFT target (and GRPO `solution`) for a label."""
    direction = "rises" if label == "normal" else "falls"
    return f"<think>the level {direction}</think><answer>{label}</answer>"


def clip_frames(rng: np.random.Generator, label: str) -> np.ndarray:
    """uint8 [FRAMES, SIZE, SIZE, 3] frames of one clip (see the module docstring for the rules)."""
    speed = float(rng.uniform(3.0, 5.0))  # level change, px per frame
    width, height = int(rng.integers(34, 52)), int(rng.integers(44, 55))
    tx, ty = int(rng.integers(0, SIZE - width + 1)), int(rng.integers(0, SIZE - height + 1))
    low = float(rng.uniform(2, height - 2 - speed * (FRAMES - 1)))  # lowest level shown, px above the bottom
    levels = low + speed * np.arange(FRAMES)
    frames = np.empty((FRAMES, SIZE, SIZE, 3), dtype=np.float32)
    frames[:] = rng.integers(0, 90, size=3)  # floor
    for _ in range(int(rng.integers(1, 3))):  # static clutter
        size = int(rng.integers(5, 12))
        by, bx = (int(v) for v in rng.integers(0, SIZE - 12, size=2))
        frames[:, by:by + size, bx:bx + size] = rng.integers(0, 256, size=3)
    empty, liquid, wall = rng.integers(0, 60, size=3), rng.integers(150, 256, size=3), rng.integers(90, 200, size=3)
    frames[:, ty:ty + height, tx:tx + width] = wall
    frames[:, ty + 1:ty + height - 1, tx + 1:tx + width - 1] = empty
    for t, level in enumerate(levels):
        top = ty + height - 1 - int(round(level))
        frames[t, top:ty + height - 1, tx + 1:tx + width - 1] = liquid
    # A warning lamp that blinks at random whatever the tank does: temporal change that means nothing.
    size = int(rng.integers(5, 9))
    ly, lx = (int(v) for v in rng.integers(0, SIZE - size, size=2))
    frames[rng.random(FRAMES) < 0.5, ly:ly + size, lx:lx + size] = rng.integers(180, 256, size=3)
    frames += rng.integers(-NOISE, NOISE + 1, size=frames.shape)
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    # An abnormal clip is the normal clip of the same draw played backwards: the set of frames says
    # nothing about the label, only their order does.
    return frames[::-1].copy() if label == "abnormal" else frames


def write_clip(path: Path, frames: np.ndarray) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "16", "g": str(FRAMES)}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_demo_task(out: str | Path, seed: int = 0, sizes: TaskSizes | None = None) -> dict:
    """Write the task (layout in the module docstring); returns the contents of ``task.json``."""
    root = Path(out)
    sizes = sizes or TaskSizes()
    (root / "videos").mkdir(parents=True, exist_ok=True)
    summary = {"seed": seed, "sizes": asdict(sizes), "question": QUESTION, "labels": list(LABELS),
               "video_options": VIDEO_OPTIONS, "files": {}}
    for s, split in enumerate(SPLITS):
        records = []
        for i in range(getattr(sizes, split)):
            label = LABELS[i % 2]
            rng = np.random.default_rng([seed, s, i])
            name = f"{split}_{i:04d}.mp4"
            write_clip(root / "videos" / name, clip_frames(rng, label))
            records.append({"id": f"{split}_{i:04d}", "video": name, "conversations": [
                {"from": "human", "value": "<video>\n" + QUESTION},
                {"from": "gpt", "value": reply(label)}]})
        path = root / f"{split}.json"
        path.write_text(json.dumps(records, indent=1))
        counts = {label: sum(1 for r in records if r["conversations"][1]["value"].endswith(f">{label}</answer>"))
                  for label in LABELS}
        summary["files"][split] = {"path": path.name, "records": len(records), "labels": counts}
    (root / "task.json").write_text(json.dumps(summary, indent=1))
    return summary

"""Small synthetic datasets in every supported format, for tests and the CPU demo.

`make_synthetic(out, formats, num, with_bad)` writes tiny H.264 mp4s (64x64, 8 fps, 2-6 s, content
a pure function of the video index) under ``out/videos`` and one annotation file per format under
``out/<format>/``, then a ``manifest.json`` saying, per dataset file, which format, mode and media
root to load it with and how many samples / skips by reason to expect. The labels are
deterministic functions of the index too, so a tiny model can learn them in the demo.

With ``with_bad=True`` each file also gets deliberately broken records: a missing video, a
zero-length video, a path escaping the media root, a record without a required key, a malformed
JSON line (JSON-lines files), timestamps outside the video (grounding formats) and a record whose
video is a truncated mp4. The last kind passes the cheap load-time checks and is only caught when
the loader decodes it, so its count is in ``decode_skips``, not in ``load_skips``.

CLI: ``python tools/make_synthetic.py --out DIR [--formats all] [--num N] [--with-bad]``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

FORMATS = ("llava_conv", "open_r1_video", "time_r1_tg", "rarft_riq", "robo2vlm_mcq", "video_r2", "smarthome_vad")
FPS = 8
SIZE = 64
LABELS = ("normal", "abnormal")


def video_frames(index: int) -> int:
    """Frame count of synthetic video ``index``: 16..48 frames (2..6 s at 8 fps)."""
    return 16 + 8 * (index % 5)


def label_of(index: int) -> str:
    return LABELS[index % 2]


def write_video(path: Path, index: int, n_frames: int | None = None) -> Path:
    """Video ``index``: a flat background (hue from the index) with a white square moving left to right;
    abnormal-labelled videos get a red square instead."""
    n_frames = video_frames(index) if n_frames is None else n_frames
    rng = np.random.default_rng(index)
    background = rng.integers(40, 200, size=3, dtype=np.uint8)
    square = np.array([220, 40, 40] if label_of(index) == "abnormal" else [240, 240, 240], dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "20", "g": "8"}
        for i in range(n_frames):
            img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
            img[:] = background
            x = int(i * (SIZE - 16) / max(1, n_frames - 1))
            img[24:40, x:x + 16] = square
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def png_bytes(index: int) -> bytes:
    rng = np.random.default_rng(1000 + index)
    img = np.empty((56, 84, 3), dtype=np.uint8)
    img[:] = rng.integers(0, 255, size=3, dtype=np.uint8)
    img[20:36, 10 + 8 * (index % 6): 26 + 8 * (index % 6)] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


class _Writer:
    """Collects records and the expected skip counts of one dataset file."""

    def __init__(self, root: Path, fmt: str, name: str, mode: str, options: dict | None = None):
        self.fmt, self.mode, self.options = fmt, mode, options or {}
        self.path = root / fmt / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list = []
        self.samples = 0
        self.load_skips: dict[str, int] = {}
        self.decode_skips: dict[str, int] = {}

    def good(self, record, samples: int = 1):
        self.records.append(record)
        self.samples += samples

    def bad(self, record, reason: str, at_decode: bool = False, samples: int = 1):
        self.records.append(record)
        counts = self.decode_skips if at_decode else self.load_skips
        counts[reason] = counts.get(reason, 0) + 1
        if at_decode:
            self.samples += samples

    def manifest(self, root: Path) -> dict:
        return {"format": self.fmt, "mode": self.mode, "path": str(self.path.relative_to(root)),
                "media_root": "videos", "options": self.options, "records": len(self.records),
                "samples": self.samples, "load_skips": self.load_skips, "decode_skips": self.decode_skips}


def _conv(i: int, placeholder: bool, assistant_role: str, reasoning: bool) -> list[dict]:
    label = label_of(i)
    reply = f"<think>The square in video {i} is {'red' if label == 'abnormal' else 'white'}.</think>\n" \
            f"<answer>{label}</answer>" if reasoning else label
    question = ("<video>\n" if placeholder else "") + "Is anything unusual happening?"
    return [{"from": "human", "value": question}, {"from": assistant_role, "value": reply}]


def _span(i: int) -> list[float]:
    duration = video_frames(i) / FPS
    return [round(0.25 * duration, 2), round(0.75 * duration, 2)]


def _add_bad_media(w: _Writer, make, with_placeholder_key: str = "video"):
    """Records whose media is missing / zero-length / escaping / truncated, and one without the key."""
    w.bad(make("does_not_exist.mp4"), "missing_media")
    w.bad(make("empty.mp4"), "empty_media")
    w.bad(make("../../etc/passwd"), "path_escape")
    w.bad(make("truncated.mp4"), "corrupt_media", at_decode=True)
    record = make("vid_000.mp4")
    record.pop(with_placeholder_key, None)
    w.bad(record, "missing_key")


def make_synthetic(out: str | Path, formats=FORMATS, num: int = 8, with_bad: bool = False) -> dict:
    """Write the datasets (see the module docstring); returns the manifest (also written to JSON)."""
    root = Path(out)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {FORMATS}")
    for i in range(num):
        write_video(root / "videos" / f"vid_{i:03d}.mp4", i)
    if with_bad:
        (root / "videos" / "empty.mp4").write_bytes(b"")
        good = (root / "videos" / "vid_000.mp4").read_bytes()
        (root / "videos" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    writers: list[_Writer] = []
    vid = [f"vid_{i:03d}.mp4" for i in range(num)]

    if "llava_conv" in formats:
        for mode, name in (("sft", "sft.json"), ("grpo", "grpo.json")):
            w = _Writer(root, "llava_conv", name, mode)
            for i in range(num):
                w.good({"id": f"llava_{i}", "video": vid[i], "conversations": _conv(i, True, "gpt", True)})
            if with_bad:
                _add_bad_media(w, lambda p: {"video": p, "conversations": _conv(0, True, "gpt", True)})
            writers.append(w)

    if "open_r1_video" in formats:
        w = _Writer(root, "open_r1_video", "grpo.jsonl", "grpo")
        for i in range(num):
            w.good({"problem": "Is anything unusual happening?", "solution": f"<answer>{label_of(i)}</answer>",
                    "video": vid[i]})
        if with_bad:
            _add_bad_media(w, lambda p: {"problem": "q", "solution": "<answer>normal</answer>", "video": p})
            w.bad("{not json", "bad_json")
        writers.append(w)

    if "time_r1_tg" in formats:
        w = _Writer(root, "time_r1_tg", "train.json", "grpo")
        for i in range(num):
            span = _span(i)
            if i == 1:
                span = [span[0], video_frames(i) / FPS + 3.0]  # ends after the video: clamped, kept
            w.good({"video": vid[i], "duration": video_frames(i) / FPS, "timestamp": span,
                    "sentence": "The square crosses the frame.", "qid": f"my|syn|{i}"})
        if with_bad:
            _add_bad_media(w, lambda p: {"video": p, "duration": 2.0, "timestamp": [0.5, 1.5], "sentence": "x."})
            w.bad({"video": vid[0], "duration": 2.0, "timestamp": [5.0, 7.0], "sentence": "late."}, "bad_timestamp")
            w.bad({"video": vid[0], "duration": 2.0, "timestamp": [1.5, 0.5], "sentence": "reversed."}, "bad_timestamp")
        writers.append(w)

    if "rarft_riq" in formats:
        w = _Writer(root, "rarft_riq", "anno.json", "grpo")

        def rarft(i, path, span=None):
            return {"video": f"/home/someone/data/{path}" if i % 2 else f"../videos/{path}",
                    "timestamp": span or _span(i), "duration": None if i % 3 == 0 else video_frames(i) / FPS,
                    "query_text": "the square moves",
                    "GRPO": [{"q": "the square moves", "a": "<answer>{:.1f} to {:.1f}</answer>".format(*_span(i)),
                              "r": True, "difficulty": "original"},
                             {"q": "the circle moves", "a": "<answer>There is no circle; a square moves. circle "
                              "the square moves</answer>", "r": False, "c": ["Object/ObjectExistence"],
                              "difficulty": "hard"}]}
        for i in range(num):
            w.good(rarft(i, vid[i]), samples=2)
        if with_bad:
            # With basename remapping a "../../etc/passwd" path cannot escape: it becomes "passwd".
            w.bad(rarft(1, "does_not_exist.mp4"), "missing_media")
            w.bad(rarft(1, "empty.mp4"), "empty_media")
            w.bad(rarft(1, "truncated.mp4"), "corrupt_media", at_decode=True, samples=2)
            w.bad(rarft(1, vid[0], span=[9.0, 12.0]), "bad_timestamp")
            record = rarft(1, vid[0])
            record.pop("GRPO")
            w.bad(record, "missing_key")
        writers.append(w)

    if "robo2vlm_mcq" in formats:
        for mode in ("sft", "grpo"):
            w = _Writer(root, "robo2vlm_mcq", f"{mode}.parquet", mode)
            for i in range(num):
                choices = ["left", "middle", "right"]
                as_list = i % 2 == 0
                w.good({"id": f"robo_{i}", "question": "Where is the white block?",
                        "choices": json.dumps(choices) if not as_list else str(choices),
                        "correct_answer": str(i % 3) if as_list else "ABC"[i % 3],
                        "image": {"bytes": png_bytes(i), "path": None}})
            if with_bad:
                w.bad({"id": "bad_choice", "question": "q", "choices": "not a list", "correct_answer": "0",
                       "image": {"bytes": png_bytes(0), "path": None}}, "bad_record")
                w.bad({"id": "no_image", "question": "q", "choices": "['a', 'b']", "correct_answer": "1",
                       "image": {"bytes": None, "path": None}}, "missing_key")
                w.bad({"id": "bad_png", "question": "q", "choices": "['a', 'b']", "correct_answer": "B",
                       "image": {"bytes": png_bytes(0)[:40], "path": None}}, "corrupt_media", at_decode=True)
            writers.append(w)

    if "video_r2" in formats:
        subs = root / "video_r2" / "subtitles"
        subs.mkdir(parents=True, exist_ok=True)
        for i in range(0, num, 2):
            (subs / f"vid_{i:03d}.srt").write_text(
                "1\n00:00:00,000 --> 00:00:01,500\nthe square appears\n\n2\n00:00:01,500 --> 00:00:09,000\n"
                "it keeps moving\n", encoding="utf-8")
        for mode in ("sft", "grpo"):
            w = _Writer(root, "video_r2", f"{mode}.json", mode, {"subtitles_root": str(subs)})
            for i in range(num):
                record = {"id": f"r2_{i}", "video": vid[i], "conversations": [
                    {"from": "human", "value": "<video>\nWhat colour is the square?\nA. white\nB. red"},
                    {"from": "assistant", "value": f"<think>At 00:01 the square is visible.</think>\n<answer>"
                     f"{'B. red' if label_of(i) == 'abnormal' else 'A. white'}</answer>"}]}
                if mode == "grpo":
                    record["temporal_grounding"] = {"00:01": "The square is visible.", "00:00-00:02": None}
                w.good(record)
            if with_bad:
                _add_bad_media(w, lambda p: {"id": "bad", "video": p, "conversations": _conv(0, True, "assistant", True)})
            writers.append(w)

    if "smarthome_vad" in formats:
        w = _Writer(root, "smarthome_vad", "Video_Annotation.csv", "sft")
        tags = ("Normal", "Abnormal", "Vague Abnormal")
        rows = []
        for i in range(num):
            tag = "Normal" if label_of(i) == "normal" else tags[1 + (i // 2) % 2]
            rows.append([f"vid_{i:03d}", "Pet Monitoring", tag, f"Video {i}.", f"The square is "
                         f"{'red' if label_of(i) == 'abnormal' else 'white'}."])
            w.good(None)
        if with_bad:
            rows.append(["does_not_exist", "Security", "Normal", "d", "r"])
            w.bad(None, "missing_media")
            rows.append(["empty", "Security", "Abnormal", "d", "r"])
            w.bad(None, "empty_media")
            rows.append(["vid_000", "Security", "Unclear", "d", "r"])
            w.bad(None, "bad_label")
            rows.append(["truncated", "Security", "Normal", "d", "r"])
            w.bad(None, "corrupt_media", at_decode=True)
        w.records = rows
        writers.append(w)

    for w in writers:
        _dump(w)
    manifest = {"root": str(root), "datasets": [w.manifest(root) for w in writers]}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _dump(w: _Writer) -> None:
    if w.path.suffix == ".jsonl":
        w.path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in w.records))
    elif w.path.suffix == ".json":
        w.path.write_text(json.dumps(w.records, indent=1))
    elif w.path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(w.records), w.path)
    else:
        import csv

        with open(w.path, "w", newline="", encoding="utf-8-sig") as f:
            out = csv.writer(f)
            out.writerow(["Title", "Category", "Anomaly Tag", "Video Description",
                          "Reasoning behind Normality/Anomalies"])
            out.writerows(w.records)

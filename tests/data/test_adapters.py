"""Dataset adapters: every format loads its synthetic file with exact counts; per-format fields;
bad input is skipped and counted by reason; unusable files are errors naming the file."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from _synthetic import NUM, dataset, synthetic_tree

from megatron_vrft.data import DataFormatError, load_samples
from megatron_vrft.data.adapters._common import LoadContext, read_json_any, split_placeholders
from megatron_vrft.data.sample import SkipRecord, decode_media
from megatron_vrft.data.synthetic import FPS, label_of, video_frames

CASES = [(d["format"], d["mode"]) for d in synthetic_tree()[1]["datasets"]]


def _load(fmt, mode, **kw):
    d = dataset(fmt, mode)
    return load_samples(d["path"], fmt, d["media_root"], mode=mode, **{**d["options"], **kw}), d


@pytest.mark.parametrize("fmt,mode", CASES)
def test_counts_match_manifest(fmt, mode, caplog):
    (samples, report), d = _load(fmt, mode)
    assert len(samples) == d["samples"]
    assert dict(report.skipped) == d["load_skips"]
    assert report.total == d["records"]
    assert len({s.id for s in samples}) == len(samples)
    for s in samples:
        assert s.source.startswith(d["path"].name)
        assert (s.target is None) == (mode == "grpo")
        items = [i for m in s.messages if isinstance(m["content"], list) for i in m["content"]
                 if i["type"] in ("video", "image")]
        assert [i["type"] for i in items] == [m.kind for m in s.media]
    # one summary line for the file
    assert [r.message for r in caplog.records if "samples from" in r.message] == [report.summary_line()]


def test_llava_conv_sft_and_grpo():
    (sft, _), d = _load("llava_conv", "sft")
    s = sft[1]
    assert s.id == "llava_1"
    assert s.messages[0] == {"role": "user", "content": [{"type": "video", "video": s.media[0].path},
                                                         {"type": "text", "text": "Is anything unusual happening?"}]}
    assert s.target.endswith("<answer>abnormal</answer>") and s.messages[-1]["role"] == "assistant"
    assert s.columns == {"solution": s.target, "answer": "abnormal"}
    assert s.media[0].path == str(d["media_root"] / "vid_001.mp4")
    (grpo, _), _ = _load("llava_conv", "grpo")
    g = grpo[1]
    assert [m["role"] for m in g.messages] == ["user"] and g.prompt_messages() == g.messages
    assert g.columns["answer"] == "abnormal" and g.columns["question"] == "Is anything unusual happening?"


def test_placeholders_multi_turn_and_images(tmp_path):
    root, _ = synthetic_tree()
    record = {"image": ["a.png", "b.png"], "video": "vid_000.mp4", "conversations": [
        {"from": "human", "value": "<image>\nfirst <video>\nthen\n<image>"},
        {"from": "gpt", "value": "one"}, {"from": "human", "value": "more?"}, {"from": "assistant", "value": "two"}]}
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"png")
    (tmp_path / "vid_000.mp4").write_bytes((root / "videos" / "vid_000.mp4").read_bytes())
    path = tmp_path / "conv.json"
    path.write_text(json.dumps([record]))
    [s], _ = load_samples(path, "llava_conv")  # no media_root: paths resolve next to the file
    kinds = [i.get("type") for i in s.messages[0]["content"]]
    assert kinds == ["image", "text", "video", "text", "image"]
    assert [m.path.rsplit("/", 1)[-1] for m in s.media] == ["a.png", "vid_000.mp4", "b.png"]
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"] and s.target == "two"
    assert split_placeholders("x\n<video>\ny") == ["x", ("video",), "y"]


def test_open_r1_video_absolute_paths_and_remap(tmp_path):
    root, _ = synthetic_tree()
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"problem": "Q?", "solution": "<answer>B.</answer>",
                                "video": f"file://{root}/videos/vid_002.mp4"}) + "\n"
                    + json.dumps({"problem": "Q?", "solution": "<answer>A.</answer>",
                                  "video": "/elsewhere/machine/vid_003.mp4"}) + "\n")
    samples, report = load_samples(path, "open_r1_video", mode="grpo")  # absolute paths used as they are
    assert [s.media[0].path for s in samples] == [f"{root}/videos/vid_002.mp4"]
    assert report.skipped == {"missing_media": 1}
    assert samples[0].columns["answer"] == "B." and samples[0].media[0].options == {"nframes": 16, "max_pixels": 196 * 784}
    # under a media_root an outside absolute path escapes, unless remapped by basename
    with pytest.raises(DataFormatError, match=r"path_escape=2"):
        load_samples(path, "open_r1_video", tmp_path, mode="grpo")
    samples, _ = load_samples(path, "open_r1_video", root / "videos", mode="grpo", path_remap="basename",
                              video_options={"fps": 1.0})
    assert [s.media[0].path.rsplit("/", 1)[-1] for s in samples] == ["vid_002.mp4", "vid_003.mp4"]
    assert samples[0].media[0].options == {"fps": 1.0, "max_pixels": 196 * 784}  # user fps replaces nframes
    with pytest.raises(DataFormatError, match="supports mode"):
        load_samples(path, "open_r1_video", mode="sft")


def test_time_r1_clamps_and_normalises():
    (samples, _), _ = _load("time_r1_tg", "grpo")
    s0, s1 = samples[0], samples[1]
    assert s0.columns["gt_span"] == [0.5, 1.5] and s0.columns["duration"] == 2.0 and s0.columns["task_type"] == "tg"
    assert s1.columns["gt_span"] == [round(0.25 * 3.0, 2), 3.0]  # end 6.0 clamped to the 3 s video
    assert s0.columns["question"] == "the square crosses the frame"
    first = s0.messages[0]["content"]
    assert first[0]["type"] == "text" and "the square crosses the frame" in first[0]["text"] and first[1]["type"] == "video"
    assert s0.id == "my|syn|0"


def test_rarft_rows_remap_and_probe_duration():
    (samples, _), d = _load("rarft_riq", "grpo")
    assert len(samples) == 2 * (NUM + 1)  # + the truncated video, caught only when decoded
    ans, ref = samples[0], samples[1]
    assert ans.columns["task_type"] == "answerable" and ref.columns["task_type"] == "refusable"
    # record 0 has duration null -> read from the file (16 frames at 8 fps)
    assert ans.columns["duration"] == pytest.approx(video_frames(0) / FPS)
    assert ans.columns["gt_span"] == [0.5, 1.5] and ref.columns["gt_span"] is None
    assert ans.columns["reference_queries"][0].startswith("<answer>There is no circle")
    assert ref.columns["reference_queries"] == ["the square moves"] and ref.columns["question"] == "the circle moves"
    # "/home/someone/data/vid_001.mp4" and "../videos/vid_000.mp4" both remapped under media_root
    assert samples[2].media[0].path == str(d["media_root"] / "vid_001.mp4")
    (only, _), _ = _load("rarft_riq", "grpo", rows=("refusable",))
    assert {s.columns["task_type"] for s in only} == {"refusable"}


def test_robo2vlm_choices_answers_and_keys():
    (sft, _), _ = _load("robo2vlm_mcq", "sft")
    for i, s in enumerate(sft[:NUM]):
        letter = "ABC"[i % 3]
        assert s.columns["choices"] == ["left", "middle", "right"]
        assert s.target == f"{letter}. {['left', 'middle', 'right'][i % 3]}" == s.columns["answer"]
        assert s.media[0].kind == "image" and s.media[0].data.startswith(b"\x89PNG")
        assert s.messages[0]["content"][-1]["text"] == (
            "Where is the white block?\nChoices:\nA. left\nB. middle\nC. right\n")
    (grpo, _), _ = _load("robo2vlm_mcq", "grpo")
    assert grpo[0].messages[0]["role"] == "system" and "<answer>" in grpo[0].messages[0]["content"]
    with pytest.raises(DataFormatError, match=r"missing column\(s\) \['query'\]"):
        _load("robo2vlm_mcq", "sft", prompt_key="query")


def test_video_r2_subtitles_overlay_grounding():
    (grpo, _), d = _load("video_r2", "grpo")
    s = grpo[0]
    ref = s.media[0]
    assert ref.overlay == ("timestamps", "subtitles") and ref.subtitles.endswith("video_r2/subtitles/vid_000.srt")
    assert ref.options == {"fps": 2.0, "max_frames": 32, "max_pixels": 360 * 420}
    assert s.columns["temporal_grounding"] == {"00:01": "The square is visible."}  # null sentence dropped
    assert s.columns["answer"] == "A. white"
    (sft, _), _ = _load("video_r2", "sft", overlay=())
    assert sft[0].media[0].overlay == () and sft[0].media[0].options["fps"] == 1.0


def test_video_r2_subtitles_stay_under_subtitles_root(tmp_path):
    """The .srt path follows the resolved video path: an absolute video path under the media root
    maps like its relative form; a video outside the base without a media root is skipped
    (before, ``subtitles_root`` was ignored for absolute paths and ``..`` escaped it)."""
    media, subs = tmp_path / "media", tmp_path / "subs"

    def rec(i, video):
        return {"id": str(i), "video": video, "conversations": [
            {"from": "human", "value": "<video>\nQ?"}, {"from": "assistant", "value": "<answer>A</answer>"}]}

    ann = tmp_path / "ann" / "sft.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps([rec(0, "src/a/v0.mp4"), rec(1, str(media / "src/a/v1.mp4")), rec(2, "../v2.mp4")]))
    samples, report = load_samples(ann, "video_r2", media, check_media=False, subtitles_root=str(subs))
    assert [s.media[0].subtitles for s in samples] == [str(subs / "src/a/v0.srt"), str(subs / "src/a/v1.srt")]
    assert dict(report.skipped) == {"path_escape": 1}  # ../v2.mp4 leaves the media root
    ann.write_text(json.dumps([rec(0, "src/v0.mp4"), rec(1, "/elsewhere/v1.mp4")]))
    samples, report = load_samples(ann, "video_r2", check_media=False, subtitles_root=str(subs))
    assert [s.media[0].subtitles for s in samples] == [str(subs / "src/v0.srt")]
    assert dict(report.skipped) == {"path_escape": 1}
    assert "outside subtitles_root" in report.examples["path_escape"][0]


def test_smarthome_labels_and_targets():
    (sft, _), _ = _load("smarthome_vad", "sft")
    assert [s.columns["solution"] for s in sft[:NUM]] == [label_of(i) for i in range(NUM)]  # Vague -> abnormal
    assert sft[1].target == "<think>The square is red.</think>\n<answer>abnormal</answer>"
    (labels, _), _ = _load("smarthome_vad", "sft", sft_target="label")
    assert labels[1].target == "abnormal" and labels[0].id == "vid_000"


def test_context_path_rules(tmp_path):
    ctx = LoadContext(path=tmp_path / "a.json", media_root=tmp_path / "media", check_media=False)
    assert ctx.resolve("file://x/y.mp4") == str(tmp_path / "media/x/y.mp4")
    assert ctx.resolve(str(tmp_path / "media/z.mp4")) == str(tmp_path / "media/z.mp4")
    for bad in ("../../etc/passwd", "/etc/passwd", "x/../../y.mp4"):
        with pytest.raises(SkipRecord) as e:
            ctx.resolve(bad)
        assert e.value.reason == "path_escape"


def test_zero_usable_samples_names_the_file(tmp_path):
    path = tmp_path / "all_bad.jsonl"
    path.write_text('{"problem": "q", "solution": "s", "video": "nope.mp4"}\n{broken\n')
    with pytest.raises(DataFormatError, match=r"all_bad\.jsonl: no usable samples") as e:
        load_samples(path, "open_r1_video", tmp_path, mode="grpo")
    assert "missing_media=1" in str(e.value) and "bad_json=1" in str(e.value)


@pytest.mark.parametrize("content,fmt,msg", [
    ('[{"video": "a"},\n  {oops}]', "time_r1_tg", r"bad\.json:2:4: invalid JSON"),
    ('"a string"', "time_r1_tg", "expected a JSON list of records, got str"),
    ('{"a": 1}', "time_r1_tg", r"(?s)bad\.json: no usable samples.*missing_key=1"),
])
def test_unreadable_files(tmp_path, content, fmt, msg):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=msg):
        load_samples(path, fmt, mode="grpo")


def test_bad_arguments(tmp_path):
    d = dataset("llava_conv", "sft")
    with pytest.raises(DataFormatError, match="unknown dataset format"):
        load_samples(d["path"], "llava")
    with pytest.raises(DataFormatError, match=r"unknown option\(s\) \['bogus'\]"):
        load_samples(d["path"], "llava_conv", bogus=1)
    with pytest.raises(DataFormatError, match="does not exist"):
        load_samples(tmp_path / "nope.json", "llava_conv")
    with pytest.raises(DataFormatError, match=r"unknown video option\(s\) \['fpz'\]"):
        load_samples(d["path"], "llava_conv", d["media_root"], video_options={"fpz": 1})


def test_video_r2_overlay_is_drawn_on_decoded_frames():
    from megatron_vrft.data.overlay import hhmmss, parse_srt

    from megatron_vrft.data.overlay import overlay_frames
    from megatron_vrft.data.patchify import patchify_video

    # 10 frames arrive in decode chunks of 8 + 2: the overlay and patchify run per chunk.
    (grpo, _), _ = _load("video_r2", "grpo", video_options={"nframes": 10, "min_pixels": 112 * 112, "max_pixels": 112 * 112})
    ref = grpo[0].media[0]
    plain_ref = dataclasses.replace(ref, overlay=())
    drawn = grpo[0].with_visuals().visuals[0]
    plain = decode_media(plain_ref)
    assert len(drawn.info.frame_indices) == 10
    whole = overlay_frames(plain.frames, drawn.info.timestamps, ref.overlay, ref.subtitles)
    assert torch.equal(drawn.frames, whole)
    assert torch.equal(drawn.pixel_values, patchify_video(whole, sample_fps=drawn.info.sample_fps)[0])
    diff = (drawn.frames.int() - plain.frames.int()).abs()
    assert diff[:, :, :14, :].sum() > 0  # timestamp box top-left
    assert diff[:, :, -14:, :].sum() > 0  # subtitle cue at the bottom (vid_000 has an .srt)
    assert diff[:, :, 40:70, 40:70].sum() == 0  # the middle of the frame is untouched
    assert not torch.equal(drawn.pixel_values, plain.pixel_values)
    cues = parse_srt(grpo[0].media[0].subtitles)
    assert [(c.start, c.end, c.text) for c in cues] == [(0.0, 1.5, "the square appears"), (1.5, 9.0, "it keeps moving")]
    assert hhmmss(3725.9) == "01:02:05"


@pytest.mark.parametrize("content,n", [
    ('{"problem": "q", "solution": "s", "video": "v.mp4"}', 1),  # one JSON-lines record named .json
    ('{"data": [{"problem": "q", "solution": "s", "video": "v.mp4"}]}', 1),  # wrapped list
    ('{"problem": "q", "solution": "s", "video": "v.mp4"}\n{"problem": "q", "solution": "s", "video": "v.mp4"}\n', 2),
])
def test_json_layouts(tmp_path, content, n):
    path = tmp_path / "t.json"
    path.write_text(content)
    records = list(read_json_any(path))
    assert len(records) == n and all(r["problem"] == "q" for _, r in records)

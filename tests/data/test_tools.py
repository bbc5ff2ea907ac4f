"""tools/make_synthetic.py and tools/check_videos.py as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    proc = _run("tools/make_synthetic.py", "--out", str(out), "--formats", "smarthome_vad,open_r1_video",
                "--num", "3", "--with-bad")
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_make_synthetic_cli(made):
    out, stdout = made
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(d["format"], d["mode"], d["records"], d["samples"]) for d in manifest["datasets"]] == [
        ("open_r1_video", "grpo", 9, 4), ("smarthome_vad", "sft", 7, 4)]
    assert sorted(p.name for p in (out / "videos").iterdir()) == [
        "empty.mp4", "truncated.mp4", "vid_000.mp4", "vid_001.mp4", "vid_002.mp4"]
    assert "smarthome_vad  sft  smarthome_vad/Video_Annotation.csv: 7 records, 4 samples" in stdout
    bad = _run("tools/make_synthetic.py", "--out", str(out / "x"), "--formats", "nope")
    assert bad.returncode == 2 and "unknown format(s) ['nope']" in bad.stderr


def test_check_videos_lists_bad_media(made):
    out, _ = made
    proc = _run("tools/check_videos.py", str(out / "smarthome_vad/Video_Annotation.csv"), "--format",
                "smarthome_vad", "--media-root", str(out / "videos"))
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[:3] == [
        f"corrupt_media\t{out}/videos/truncated.mp4\tVideo_Annotation.csv:8",
        f"empty_media\t{out}/videos/empty.mp4\tVideo_Annotation.csv:6",
        f"missing_media\t{out}/videos/does_not_exist.mp4\tVideo_Annotation.csv:5",
    ]
    assert lines[3].startswith("bad_label\tVideo_Annotation.csv:7")
    assert lines[-1] == ("6 media files checked: 3 bad (corrupt_media=1, empty_media=1, missing_media=1); "
                         "1 record(s) unusable for other reasons")


def test_check_videos_clean_dataset_and_errors(made, tmp_path):
    out, _ = made
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps({"problem": "q", "solution": "<answer>a</answer>", "video": f"vid_00{i}.mp4"})
                             + "\n" for i in range(3)))
    proc = _run("tools/check_videos.py", str(clean), "--format", "open_r1_video", "--media-root", str(out / "videos"),
                "--decode")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("3 media files checked: 0 bad (none)")
    missing = _run("tools/check_videos.py", str(tmp_path / "nope.json"), "--format", "llava_conv")
    assert missing.returncode == 2 and "does not exist" in missing.stderr

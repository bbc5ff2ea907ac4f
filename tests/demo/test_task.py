"""The demo task: deterministic from its seed, balanced, readable by the seed-000 adapter in both
modes, scored right by the seed-000 rewards, and the label lives only in the change across frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_vrft.data import load_samples
from megatron_vrft.demo.task import FRAMES, LABELS, SIZE, VIDEO_OPTIONS, TaskSizes, clip_frames, make_demo_task, reply
from megatron_vrft.rewards.labels import accuracy, format_reward


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_task")
    return root, make_demo_task(root, seed=3, sizes=TaskSizes(sft=4, grpo=6, heldout=4))


def test_layout_balance_and_determinism(task, tmp_path):
    root, summary = task
    for split, n in (("sft", 4), ("grpo", 6), ("heldout", 4)):
        info = summary["files"][split]
        assert info["records"] == n and info["labels"] == {"normal": n // 2, "abnormal": n // 2}
        assert len(json.loads((root / f"{split}.json").read_text())) == n
    assert json.loads((root / "task.json").read_text()) == summary
    again = make_demo_task(tmp_path, seed=3, sizes=TaskSizes(sft=4, grpo=6, heldout=4))
    assert again == summary and (tmp_path / "grpo.json").read_text() == (root / "grpo.json").read_text()
    a, b = clip_frames(np.random.default_rng([3, 1, 0]), "normal"), clip_frames(np.random.default_rng([3, 1, 0]), "normal")
    assert a.shape == (FRAMES, SIZE, SIZE, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    with pytest.raises(ValueError, match="heldout size must be an even number"):
        TaskSizes(heldout=3)


def test_adapter_modes_and_rewards(task):
    root, _ = task
    sft, report = load_samples(root / "sft.json", "llava_conv", root / "videos", mode="sft", video_options=VIDEO_OPTIONS)
    assert report.num_skipped == 0 and sft[0].target == reply(LABELS[0])
    prompts, _ = load_samples(root / "heldout.json", "llava_conv", root / "videos", mode="grpo",
                              video_options=VIDEO_OPTIONS)
    solutions = [p.columns["solution"] for p in prompts]
    assert accuracy(solutions, solution=solutions) == [1.0] * 4 and format_reward(solutions) == [1.0] * 4
    flipped = [reply(LABELS[1 - i % 2]) for i in range(4)]
    assert accuracy(flipped, solution=solutions) == [0.0] * 4
    decoded = prompts[0].with_visuals()
    assert decoded.video_grid_thw.tolist() == [[FRAMES // 2, SIZE // 14, SIZE // 14]]


def test_only_the_order_of_frames_tells_the_label():
    """An abnormal clip is the normal clip of the same draw reversed, and the trend tells them apart."""
    for i in range(20):
        normal = clip_frames(np.random.default_rng([0, 9, i]), "normal")
        abnormal = clip_frames(np.random.default_rng([0, 9, i]), "abnormal")
        assert np.array_equal(abnormal, normal[::-1])
        brightness = normal.astype(np.float64).mean(axis=(1, 2, 3))
        assert brightness[-1] > brightness[0]  # the bright liquid fills more of the frame over time

"""The demo's held-out table: hand-computed scores, margin and verdicts."""

import math

import pytest

from megatron_vrft.demo.report import accuracy_margin, format_table, score_heldout


def test_score_heldout():
    texts = ["<think>the level rises</think><answer>normal</answer>", "<answer>normal</answer>",
             "<think>x</think><answer>abnormal</answer>", "garbage"]
    sols = ["<think>t</think><answer>normal</answer>", "<answer>abnormal</answer>", "abnormal", "normal"]
    assert score_heldout(texts, sols) == {"n": 4, "accuracy": 0.5, "format": 0.5, "reward": 1.0}
    with pytest.raises(ValueError, match="one completion per held-out prompt"):
        score_heldout(texts[:2], sols)


def test_margin_and_table():
    assert accuracy_margin(0.5, 0.9, 200) == pytest.approx(2 * math.sqrt((0.25 + 0.09) / 200))
    rows = {"base": {"n": 200, "accuracy": 0.0, "format": 0.0, "reward": 0.0},
            "after SFT": {"n": 200, "accuracy": 0.5, "format": 1.0, "reward": 1.5},
            "after GRPO": {"n": 200, "accuracy": 0.53, "format": 1.0, "reward": 1.53}}
    table = format_table(rows)
    assert "| after SFT | 200 | 0.500 | 1.000 | 1.500 |" in table
    assert "after SFT vs base: accuracy +0.500 (2-SE noise margin 0.071: beyond noise)" in table
    assert "after GRPO vs after SFT: accuracy +0.030 (2-SE noise margin 0.100: within noise)" in table

"""tools/eval/metrics.py against hand-computed values on small fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "eval"))
from metrics import aggregate, metric_for, score_rows, temporal_iou  # noqa: E402


def test_binary_accuracy():
    completions = ["<think>x</think><answer>normal</answer>", "<answer> Abnormal </answer>", "no answer",
                   "<answer>normal</answer>"]
    solutions = ["<answer>normal</answer>", "abnormal", "normal", "abnormal"]
    scored = score_rows("binary", completions, [{"solution": s} for s in solutions])
    assert [s.score for s in scored] == [1.0, 1.0, 0.0, 0.0]
    assert [s.parsed for s in scored] == ["normal", "abnormal", None, "normal"]
    assert aggregate("binary", scored) == {"n": 4, "accuracy": 0.5}


def test_multiple_choice_accuracy():
    choices = [["red", "blue", "green"]] * 4
    answers = ["B", 0, "green", "C"]
    completions = ["<answer>B</answer>", "<answer>(A) red</answer>", "<answer>green</answer>", "<answer>A</answer>"]
    scored = score_rows("choice", completions, [{"choices": c, "answer": a} for c, a in zip(choices, answers)])
    assert [s.score for s in scored] == [1.0, 1.0, 1.0, 0.0]
    assert [s.parsed for s in scored] == ["B", "A", "green", "A"]
    assert aggregate("choice", scored) == {"n": 4, "accuracy": 0.75}


def test_temporal_grounding_miou_and_recall():
    assert temporal_iou((4.0, 8.0), (2.0, 6.0)) == pytest.approx(2 / 6)
    assert temporal_iou((0.0, 1.0), (2.0, 3.0)) == 0.0
    rows = [("<answer>2 to 6</answer>", [2, 6]),  # IoU 1
            ("<answer>4.0 to 8.0</answer>", [2, 6]),  # 2 / 6
            ("<think>t</think><answer>[2, 6]</answer>", [1, 5]),  # 3 / 5
            ("the event is somewhere", [2, 6])]  # no span: 0
    scored = score_rows("grounding", [r[0] for r in rows], [{"gt_span": r[1]} for r in rows])
    assert [s.score for s in scored] == pytest.approx([1.0, 1 / 3, 0.6, 0.0])
    assert scored[2].parsed == [2.0, 6.0] and scored[3].parsed is None
    report = aggregate("grounding", scored)
    assert report["mIoU"] == pytest.approx((1 + 1 / 3 + 0.6) / 4)
    assert (report["R@0.3"], report["R@0.5"], report["R@0.7"]) == (0.75, 0.5, 0.25)


def test_refusal_accuracy():
    rows = [("answerable", [0, 10], "<answer>0 to 5</answer>"),  # answered: right, IoU 0.5
            ("answerable", [2, 4], "<answer>There is no such event</answer>"),  # refused: wrong
            ("refusable", None, "<answer>There is no circle in the video</answer>"),  # refused: right
            ("refusable", None, "<answer>1 to 2</answer>"),  # answered: wrong
            ("refusable", None, "I cannot tell")]  # no decision: wrong
    scored = score_rows("refusal", [r[2] for r in rows], [{"task_type": r[0], "gt_span": r[1]} for r in rows])
    assert [s.score for s in scored] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert [s.extra["decision"] for s in scored] == ["answer", "refuse", "refuse", "answer", None]
    report = aggregate("refusal", scored)
    assert report == pytest.approx({"n": 5, "refusal_accuracy": 0.4, "answerable": 2, "refusable": 3,
                                    "answered_rate": 0.5, "refused_rate": 1 / 3, "answerable_mIoU": 0.25,
                                    "answerable_R@0.3": 0.5, "answerable_R@0.5": 0.5, "answerable_R@0.7": 0.0})


def test_metric_choice_from_columns():
    assert metric_for({"task_type": "refusable", "gt_span": None}) == "refusal"
    assert metric_for({"gt_span": [1, 2], "duration": 3.0}) == "grounding"
    assert metric_for({"gt_span": [1, 2], "duration": 3.0, "task_type": "tg"}) == "grounding"  # Time-R1 rows
    assert metric_for({"choices": ["a", "b"], "answer": "A", "solution": "<answer>A</answer>"}) == "choice"
    assert metric_for({"solution": "normal"}) == "binary"
    with pytest.raises(ValueError, match="no evaluation metric applies"):
        metric_for({"question": "q"})
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        aggregate("bleu", [])

"""tools/eval/evaluate.py's scoring and report plumbing on real `Sample`s (RA-RFT and binary rows).

A stand-in returns canned completions in the engine interface's shape (one list of completions
per prompt), so each metric sees chosen texts; test_eval_e2e.py runs the tool with the real engines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "eval"))
from evaluate import run_eval, write_outputs  # noqa: E402

from megatron_vrft.data.loader import LoadedItem  # noqa: E402
from megatron_vrft.data.sample import Sample  # noqa: E402


class CannedEngine:
    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, sampling):
        assert sampling.n == 1 and len(prompts) == len(self.texts)
        return [[SimpleNamespace(text=t, finish_reason="stop")] for t in self.texts]


def _items(columns):
    return [LoadedItem(i, i, sample=Sample(f"s{i}", f"f.json:{i}", [], columns=c)) for i, c in enumerate(columns)]


def test_refusal_report_and_samples(tmp_path):
    items = _items([{"task_type": "answerable", "gt_span": [0, 10], "duration": 12.0},
                    {"task_type": "refusable", "gt_span": None}])
    engine = CannedEngine(["<answer>0 to 5</answer>", "<answer>There is no dog.</answer>"])
    metrics, rows = run_eval(engine, items, SimpleNamespace(n=1))
    assert metrics["metric"] == "refusal" and metrics["refusal_accuracy"] == 1.0
    assert metrics["answerable_mIoU"] == pytest.approx(0.5)
    write_outputs(tmp_path, {"metrics": metrics}, rows)
    lines = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(r["id"], r["parsed"], r["score"]) for r in lines] == [("s0", [0.0, 5.0], 1.0), ("s1", "refuse", 1.0)]
    assert lines[0]["completion"] == "<answer>0 to 5</answer>" and lines[0]["iou"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "report.json").read_text())["metrics"] == metrics


def test_binary_with_custom_labels_and_mixed_rows():
    items = _items([{"solution": "<answer>left</answer>"}, {"solution": "right"}])
    metrics, rows = run_eval(CannedEngine(["<answer>left</answer>", "<answer>left</answer>"]), items,
                             SimpleNamespace(n=1), "auto", {"labels": ["left", "right"]})
    assert metrics == {"metric": "binary", "n": 2, "accuracy": 0.5}
    mixed = _items([{"solution": "normal"}, {"gt_span": [1, 2]}])
    with pytest.raises(ValueError, match=r"different metrics \['binary', 'grounding'\]"):
        run_eval(CannedEngine(["a", "b"]), mixed, SimpleNamespace(n=1))

"""Every example record in docs/data.md loads with its format and gives the documented columns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_vrft.data import load_samples
from megatron_vrft.data.synthetic import png_bytes

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"
EXAMPLE = re.compile(r"<!-- example (\w+) (\w+) (\S+) -->\n```\w+\n(.*?)```\n<!-- end example -->", re.DOTALL)
EXAMPLES = {m.group(1): m.groups()[1:] for m in EXAMPLE.finditer(DOC.read_text())}

EXPECTED = {
    "llava_conv": [{"solution": "<think>A dog walks across an empty porch.</think>\n<answer>normal</answer>",
                    "answer": "normal"}],
    "open_r1_video": [{"solution": "<answer>B.</answer>", "answer": "B.",
                       "question": "What does the person pick up first?\nA. a cup\nB. a phone\n"}],
    "time_r1_tg": [{"gt_span": [3.2, 31.5], "duration": 31.5, "task_type": "tg", "question": "a man opens the fridge"}],
    "rarft_riq": [
        {"task_type": "answerable", "gt_span": [3.2, 7.9], "duration": 31.5, "answer": "<answer>3.2 to 7.9</answer>",
         "reference_queries": ["<answer>No oven is opened; he opens the fridge. oven a man opens the fridge</answer>"],
         "question": "a man opens the fridge"},
        {"task_type": "refusable", "gt_span": None, "duration": 31.5,
         "answer": "<answer>No oven is opened; he opens the fridge. oven a man opens the fridge</answer>",
         "reference_queries": ["a man opens the fridge"], "question": "a man opens the oven"}],
    "robo2vlm_mcq": [{"choices": ["Yes", "No", "Cannot tell"], "answer": "A. Yes",
                      "question": "Is the gripper holding an object?"}],
    "video_r2": [{"solution": "<think>At 00:12 the sauce looks thick; around 00:15-00:18 water is poured.</think>\n"
                              "<answer>B. to thin the sauce</answer>",
                  "answer": "B. to thin the sauce",
                  "question": "Why does the chef add water?\nA. to cool\nB. to thin the sauce",
                  "temporal_grounding": {"00:12": "Sauce appears thick.", "00:15-00:18": "Chef pours water into pan."}}],
    "smarthome_vad": [{"solution": "abnormal", "answer": "abnormal"}],
}
TARGETS = {"robo2vlm_mcq": "A. Yes",
           "smarthome_vad": "<think>Property damage by a pet.</think>\n<answer>abnormal</answer>"}


def test_every_format_has_an_example():
    assert sorted(EXAMPLES) == sorted(EXPECTED)


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_doc_example_loads(fmt, tmp_path):
    mode, name, text = EXAMPLES[fmt]
    path = tmp_path / name
    if name.endswith(".parquet"):
        rows = json.loads(text)
        for row in rows:
            row["image"]["bytes"] = png_bytes(0)
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text(text)
    samples, report = load_samples(path, fmt, tmp_path, mode=mode, check_media=False)
    assert report.num_skipped == 0
    assert [s.columns for s in samples] == EXPECTED[fmt]
    if fmt in TARGETS:
        assert samples[0].target == TARGETS[fmt]

"""Timestamp parsing, iou_v2 (Time-R1) and refuse_iou (seed 001) with values computed from the formulas."""

import pytest

from megatron_vrft.rewards import RewardInputError, get_reward
from megatron_vrft.rewards.temporal import parse_span

iou_v2 = get_reward("iou_v2")
refuse_iou = get_reward("refuse_iou")


@pytest.mark.parametrize(
    "text",
    ["12.5 to 17.3", "12.5 - 17.3", "12.5-17.3 seconds", "[12.5, 17.3]", "12.5 and 17.3", "12.5s to 17.3s",
     "from 12.5 seconds to 17.3 seconds.", "between 3 and 5 people; 12.5 to 17.3"],
)
def test_span_forms(text):
    assert parse_span(text).span == (12.5, 17.3)


def test_integer_span():
    assert parse_span("12 to 17").span == (12.0, 17.0)


@pytest.mark.parametrize("text", ["17.3 to 12.5", "-3 to 5", "3 to -5", "[-1, 2]", "nan to 5", "3 to inf", "3 - -5"])
def test_malformed_span_is_found_but_invalid(text):
    parsed = parse_span(text)
    assert parsed.found and parsed.span is None


@pytest.mark.parametrize("text", ["no event here", "at 12 seconds", "v2 to v3", ""])
def test_no_span(text):
    assert not parse_span(text).found


def _expected_iou_v2(pred, gt, dur):
    inter = max(0.0, min(pred[1], gt[1]) - max(pred[0], gt[0]))
    union = max(pred[1], gt[1]) - min(pred[0], gt[0])
    return inter / union * (1 - abs(pred[0] - gt[0]) / dur) * (1 - abs(pred[1] - gt[1]) / dur)


def test_iou_v2_seed001_example_from_the_formula():
    # Seed 001: duration 100 s, GT [20, 40], prediction [22, 38]. Its prose says IoU 0.9 and reward
    # 0.864, but the formula gives IoU = 16/20 = 0.8, accuracy 0.98 * 0.98, reward 0.76832.
    out = iou_v2(["<answer>22 to 38</answer>"], gt_span=[[20, 40]], duration=[100])
    assert out[0] == pytest.approx(0.8 * 0.98 * 0.98) == pytest.approx(0.76832)


def test_iou_v2_values():
    completions = [
        "<think>..</think><answer>12.5 to 17.3</answer>",  # inside the GT
        "<answer>0 - 10</answer>",  # partial overlap
        "<answer>[30, 40]</answer>",  # disjoint -> IoU 0
        "<answer>10 to 20</answer>",  # exact
        "<answer>20 to 10</answer>",  # start > end -> parse failure
        "12.5 to 17.3",  # no <answer> block
        "<answer>5 to 5</answer>",  # zero-length prediction inside GT
    ]
    gt, dur = [10.0, 20.0], 50.0
    n = len(completions)
    out = iou_v2(completions, gt_span=[gt] * n, duration=[dur] * n)
    expected = [
        _expected_iou_v2((12.5, 17.3), gt, dur),  # 4.8/10 * 0.95 * 0.946 = 0.431376
        _expected_iou_v2((0, 10), gt, dur),  # 0/20 -> 0
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
    ]
    assert out == pytest.approx(expected)
    assert out[0] == pytest.approx(4.8 / 10 * 0.95 * 0.946)


def test_iou_v2_zero_union_is_zero_not_a_crash():
    # GT collapses to a point and the prediction is that point: union 0
    assert iou_v2(["<answer>5 to 5</answer>"], gt_span=[[5, 5]], duration=[10]) == [0.0]


def test_iou_v2_clamps_gt_to_the_video_and_factors_at_zero():
    # GT end 60 > duration 50 -> GT [40, 50]; prediction [40, 50] is then exact
    assert iou_v2(["<answer>40 to 50</answer>"], gt_span=[[40, 60]], duration=[50]) == [1.0]
    # prediction far past the end: end factor 1 - 120/10 < 0 is clamped, reward 0 (not negative)
    assert iou_v2(["<answer>0 to 130</answer>"], gt_span=[[0, 10]], duration=[10]) == [0.0]


def test_iou_v2_not_applicable_and_bad_input():
    assert iou_v2(["<answer>1 to 2</answer>"], gt_span=[None], duration=[10]) == [None]
    with pytest.raises(RewardInputError, match="positive duration"):
        iou_v2(["<answer>1 to 2</answer>"], gt_span=[[0, 5]], duration=[None])
    with pytest.raises(RewardInputError, match="gt_span of row 0"):
        iou_v2(["<answer>1 to 2</answer>"], gt_span=[[5, 1]], duration=[10])


def test_refuse_iou_seed001_logic_table():
    completions = [
        "<answer>22 to 38</answer>",  # answerable, span -> iou_v2
        "<answer>The query does not match the video.</answer>",  # answerable, no span -> 0
        "<answer>22 to 38</answer>",  # refusable, span -> 0
        "<answer>No person plays basketball; they cook.</answer>",  # refusable, no span -> 1
        "<answer>40 to 30</answer>",  # refusable, malformed span still counts as a span -> 0
        "I refuse.",  # refusable, no <answer> block -> 0
        "<answer>1 to 2</answer>",  # no task type -> not applicable
    ]
    kinds = ["answerable", "answerable", "refusable", "refusable", "refusable", "refusable", None]
    spans = [[20, 40], [20, 40], None, None, None, None, None]
    durs = [100, 100, None, None, None, None, None]
    out = refuse_iou(completions, task_type=kinds, gt_span=spans, duration=durs)
    assert out == pytest.approx([0.76832, 0.0, 0.0, 1.0, 0.0, 0.0, None])


def test_refuse_iou_bad_task_type():
    with pytest.raises(RewardInputError, match="task_type of row 0 is 'tg'"):
        refuse_iou(["x"], task_type=["tg"])
    with pytest.raises(RewardInputError, match="answerable row 0 has no gt_span"):
        refuse_iou(["<answer>1 to 2</answer>"], task_type=["answerable"], gt_span=[None], duration=[3])

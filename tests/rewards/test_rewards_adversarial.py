"""Every reward on ~100 kB adversarial completions: repeated, nested and unbalanced tags, long runs of
digits and whitespace. Parsing is linear-time (str.find / linear regexes); a quadratic parser would
take minutes here and hit the timeout. The assertions are on the results, not on time.
"""

import pytest

from megatron_vrft.rewards import get_reward
from megatron_vrft.rewards.judge import JudgeParseError
from megatron_vrft.rewards.tar import claims_from_mapping, parse_claims_json, parse_decision
from megatron_vrft.rewards.temporal import parse_span

IOU_INSIDE = 4.8 / 10 * 0.95 * 0.946  # span 12.5-17.3 vs GT [10, 20], duration 50

# name -> completion, and the expected value of each reward on it
CASES = {
    "open_answer_x20000": "<answer>" * 20000,
    "nested_think": "<think>" * 12000 + "reason" + "</think>" * 12000 + "<answer>normal</answer>",
    "whitespace_between_blocks": "<think>x</think>" + " \n" * 50000 + "<answer>normal</answer>",
    "unbalanced_pairs": "</think><answer>" * 10000 + "</answer>",
    "long_text_then_span": "<think>" + "a " * 50000 + "</think><answer>" + "1 " * 30000 + "12.5 to 17.3</answer>",
    "digit_run": "<answer>" + "9" * 100000 + "</answer>",
    "spaces_after_number": "<answer>1" + " " * 100000 + "x</answer>",
    "dash_chain": "<answer>" + "1-" * 50000 + "</answer>",
    "padded_choice": "<answer>" + " " * 100000 + "B</answer>",
    # the seeds' fullmatch regex backtracks over every </think> here: ~3 s at this size, 4x per doubling
    "regex_backtracking_trap": "<think>" + "</think><answer></answer>" * 4000 + "x",
    "three_blocks_long": "<think>" + "t" * 100000 + "</think><answer>No.</answer><correction>" + "cook " * 20000 + "</correction>",
}

EXPECTED = {
    # case: (accuracy, format, format_v2, iou_v2, refuse_iou refusable, mc_accuracy)
    "open_answer_x20000": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "nested_think": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "whitespace_between_blocks": (1.0, 1.0, 0.0, 0.0, 1.0, 0.0),
    "unbalanced_pairs": (0.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "long_text_then_span": (0.0, 0.0, 0.0, IOU_INSIDE, 0.0, 0.0),
    "digit_run": (0.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "spaces_after_number": (0.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "dash_chain": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # last span (1, 1): disjoint from the GT
    "padded_choice": (0.0, 0.0, 0.0, 0.0, 1.0, 1.0),
    "regex_backtracking_trap": (0.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "three_blocks_long": (0.0, 0.0, 1.0, 0.0, 1.0, 0.0),
}


@pytest.mark.timeout(120)
def test_label_temporal_choice_rewards_on_adversarial_input():
    names = list(CASES)
    completions = [CASES[k] for k in names]
    n = len(completions)
    got = {
        "accuracy": get_reward("accuracy")(completions, solution=["normal"] * n),
        "format": get_reward("format")(completions),
        "format_v2": get_reward("format_v2")(completions),
        "iou_v2": get_reward("iou_v2")(completions, gt_span=[[10, 20]] * n, duration=[50] * n),
        "refuse_iou": get_reward("refuse_iou")(completions, task_type=["refusable"] * n),
        "mc_accuracy": get_reward("mc_accuracy")(completions, choices=[["a cup", "a phone"]] * n, answer=["B"] * n),
    }
    for i, name in enumerate(names):
        row = tuple(got[r][i] for r in got)
        assert row == pytest.approx(EXPECTED[name]), name


@pytest.mark.timeout(60)
def test_dash_chain_span():
    # "1-1-1-...-1-": pairs are consumed left to right, so the last span is (1, 1)
    assert parse_span(CASES["dash_chain"]).span == (1.0, 1.0)


@pytest.mark.timeout(120)
def test_explain_correction_on_adversarial_input():
    completions = [CASES["three_blocks_long"], "<correction>" * 20000, CASES["nested_think"]]
    out = get_reward("explain_correction")(
        completions, task_type=["refusable", "refusable", "answerable"], reference_queries=[["a person cooks"]] * 3
    )
    # row 0: refuses (1.0) + a bonus from a (truncated) 100 kB correction; row 1: no answer, no
    # correction; row 2: answerable without a span
    assert 1.0 <= out[0] <= 1.5 and out[1:] == [0.0, 0.0]


@pytest.mark.timeout(60)
def test_judge_answer_parsing_on_adversarial_input():
    for text in ["{" * 100000, '{"a": ' + "[" * 100000 + "]" * 100000 + "}", "x" * 100000]:
        with pytest.raises(JudgeParseError):
            parse_claims_json(text)
    with pytest.raises(JudgeParseError):
        parse_decision("\n" * 100000 + "maybe")
    many = {f"00:{i % 60:02d}": "x." for i in range(100000)}
    assert len(claims_from_mapping(many)) == 60

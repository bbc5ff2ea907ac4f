"""Property-based fuzzing of the reward parsers (hypothesis): any completion, built from the tags and
number shapes the parsers look for or arbitrary text, gets a finite reward in range (or None where
the reward says "not applicable"); any column value gets a reward or a ``RewardInputError`` naming
the reward; the judge-answer parsers return or raise ``JudgeParseError``; nothing else. Plus
linear-time guards (10x longer input must cost < 30x) on long adversarial completions."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_vrft.rewards import get_reward
from megatron_vrft.rewards.choice import parse_choice
from megatron_vrft.rewards.judge import JudgeParseError
from megatron_vrft.rewards.registry import RewardInputError
from megatron_vrft.rewards.tar import claims_from_mapping, parse_claims_json, parse_decision
from megatron_vrft.rewards.temporal import parse_span
from megatron_vrft.rewards.text import last_block
from tests.fuzz import JSON, scales_linearly

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<correction>", "</correction>", "<", ">", "/",
          "normal", "abnormal", "A", "B.", "(C)", "a cup", " to ", "-", "–", " and ", ",", "s", "seconds",
          "12.5", "17", "-3", ".5", "nan", "inf", "1e400", "00:01", "1:02:03", "{", "}", '"', ":", "TRUE", "FALSE",
          " ", "\n", "\t", "9999999999999999999999"]
COMPLETIONS = st.lists(st.sampled_from(PIECES), max_size=30).map("".join) | st.text(max_size=60)

# reward -> columns that make every row applicable (None rows are tested through the column fuzz)
REWARDS = {
    "accuracy": lambda n: {"solution": ["normal"] * n},
    "format": lambda n: {},
    "format_v2": lambda n: {},
    "iou_v2": lambda n: {"gt_span": [[10, 20]] * n, "duration": [50] * n},
    "refuse_iou": lambda n: {"task_type": ["answerable", "refusable"] * (n // 2) + ["refusable"] * (n % 2),
                             "gt_span": [[1, 2]] * n, "duration": [30] * n},
    "mc_accuracy": lambda n: {"choices": [["a cup", "a phone", "a key"]] * n, "answer": ["B"] * n},
}
UPPER = {"accuracy": 1, "format": 1, "format_v2": 1, "iou_v2": 1, "refuse_iou": 1, "mc_accuracy": 1}


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_any_completion_gets_a_finite_reward_in_range(name):
    fn = get_reward(name)

    @FUZZ
    @given(st.lists(COMPLETIONS, min_size=1, max_size=4))
    def check(completions):
        out = fn(completions, **REWARDS[name](len(completions)))
        assert len(out) == len(completions)
        for v in out:
            assert v is not None and math.isfinite(v) and 0.0 <= v <= UPPER[name], (completions, out)

    check()


@pytest.mark.parametrize("name", sorted(set(REWARDS) - {"format", "format_v2"}))
def test_any_column_value_gets_a_reward_or_a_named_input_error(name):
    fn = get_reward(name)
    keys = sorted(REWARDS[name](1))

    @FUZZ
    @given(COMPLETIONS, st.fixed_dictionaries({k: JSON for k in keys}))
    def check(completion, row):
        try:
            out = fn([completion], **{k: [v] for k, v in row.items()})
        except RewardInputError as e:
            assert repr(name) in str(e), str(e)
            return
        assert len(out) == 1 and (out[0] is None or (math.isfinite(out[0]) and 0.0 <= out[0] <= UPPER[name]))

    check()


@FUZZ
@given(COMPLETIONS)
def test_text_parsers_return_values(text):
    parsed = parse_span(text)
    assert parsed.span is None or (math.isfinite(parsed.span[0]) and 0 <= parsed.span[0] <= parsed.span[1])
    index, rest = parse_choice(text)
    assert index is None or 0 <= index < 26
    for tag in ("think", "answer", "correction"):
        block = last_block(text, tag)
        assert block is None or block in text


@FUZZ
@given(COMPLETIONS | JSON.map(lambda v: __import__("json").dumps(v)))
def test_judge_answer_parsers_return_or_raise_judge_parse_error(text):
    for parse in (parse_claims_json, parse_decision):
        try:
            parse(text)
        except JudgeParseError:
            pass


@FUZZ
@given(JSON)
def test_claims_from_any_mapping(mapping):
    for c in claims_from_mapping(mapping):
        assert 0 <= c.start <= c.end and c.sentence.strip() == c.sentence


LONG = {
    "unclosed answers": lambda n: "<answer>" * n,
    "nested think": lambda n: "<think>" * n + "x" + "</think>" * n + "<answer>normal</answer>",
    "unbalanced pairs": lambda n: "</think><answer>" * n + "</answer>",
    "digit run": lambda n: "<answer>" + "9" * (10 * n) + "</answer>",
    "spaces after a number": lambda n: "<answer>1" + " " * (10 * n) + "x</answer>",
    "dash chain": lambda n: "<answer>" + "1-" * (5 * n) + "</answer>",
    "regex backtracking trap": lambda n: "<think>" + "</think><answer></answer>" * n + "x",
}


@pytest.mark.parametrize("case", sorted(LONG))
def test_rewards_are_linear_time_on_adversarial_completions(case):
    for name in sorted(REWARDS):
        fn = get_reward(name)
        ok, small, large = scales_linearly(lambda text: fn([text], **REWARDS[name](1)), LONG[case], 400)
        assert ok, (name, case, small, large)

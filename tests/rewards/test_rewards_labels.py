"""accuracy / format / format_v2 (seed 000 RB-FT, seeds 001/004 RA-RFT) on hand-checked cases."""

import pytest

from megatron_vrft.rewards import RewardConfigError, RewardInputError, get_reward

accuracy = get_reward("accuracy")
fmt = get_reward("format")
fmt_v2 = get_reward("format_v2")


def test_accuracy_seed000_table():
    completions = [
        "<think>The dog walks calmly.</think>\n<answer>normal</answer>",  # match
        "<think>x</think><answer> ABNORMAL </answer>",  # case-insensitive, padded
        "<think>x</think><answer>abnormal</answer>",  # wrong label
        "normal",  # no <answer> tag
        "<answer>unknown</answer>",  # outside the valid set
        "<answer>normal</answer> then <answer>abnormal</answer>",  # last answer wins
    ]
    solutions = ["normal", "<answer>abnormal</answer>", "normal", "normal", "normal", "<answer>abnormal</answer>"]
    assert accuracy(completions, solution=solutions) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_accuracy_none_solution_is_not_applicable():
    assert accuracy(["<answer>normal</answer>"] * 2, solution=[None, "Normal"]) == [None, 1.0]


def test_accuracy_custom_label_set():
    acc = get_reward("accuracy", labels=["yes", "no"])
    assert acc(["<answer>Yes</answer>", "<answer>normal</answer>"], solution=["yes", "no"]) == [1.0, 0.0]


def test_accuracy_bad_reference_is_a_clear_error():
    with pytest.raises(RewardInputError, match=r"row 1 .*'maybe'.*valid labels"):
        accuracy(["<answer>normal</answer>"] * 2, solution=["normal", "maybe"])
    with pytest.raises(RewardInputError, match="needs column 'solution'"):
        accuracy(["x"], answer=["normal"])
    with pytest.raises(RewardInputError, match="2 values for 1 completions"):
        accuracy(["x"], solution=["normal", "normal"])
    with pytest.raises(RewardConfigError, match="list of strings"):
        get_reward("accuracy", labels="normal")(["x"], solution=["normal"])


def test_format_seed000_table():
    completions = [
        "<think>A dog walks.</think>\n<answer>normal</answer>",  # 1: the template
        "  <think>a\nmulti-line\nthought</think>  <answer> Abnormal </answer>\n",  # 1: whitespace + case
        "<think></think><answer>normal</answer>",  # 0: empty reasoning
        "<think>   </think><answer>normal</answer>",  # 0: blank reasoning
        "<think>x</think><answer>cat</answer>",  # 0: label outside the set
        "<think>x</think><answer>normal</answer> extra",  # 0: text outside the tags
        "Sure! <think>x</think><answer>normal</answer>",  # 0: text before
        "<answer>normal</answer>",  # 0: missing think
        "<think>x</think><think>y</think><answer>normal</answer>",  # 0: two think blocks
        "<think>x <answer>normal</answer></think><answer>normal</answer>",  # 0: answer nested in think
    ]
    assert fmt(completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_seed000_sum_is_two_for_perfect_and_one_for_bare_correct_answer():
    completions = ["<think>calm scene</think><answer>normal</answer>", "<answer>normal</answer>"]
    sol = ["normal", "normal"]
    total = [a + f for a, f in zip(accuracy(completions, solution=sol), fmt(completions))]
    assert total == [2.0, 1.0]


def test_format_v2_seed001():
    completions = [
        "<think>t</think>\n<answer>12.5 to 17.3</answer>\n<correction>NIL</correction>",
        "<think></think><answer></answer><correction></correction>",  # empty contents allowed (seed `.*?`)
        "<think>t</think><correction>NIL</correction><answer>1 to 2</answer>",  # wrong order
        "<think>t</think><answer>1 to 2</answer>",  # missing correction
        "<think>t</think><answer>1 to 2</answer><correction>NIL</correction>!",  # trailing text
        "<think>t</think><answer>a</answer><correction>b</correction><correction>c</correction>",
    ]
    assert fmt_v2(completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]

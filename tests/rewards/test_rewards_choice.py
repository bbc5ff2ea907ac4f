"""mc_accuracy: letter / letter+text / text answers against letter, index or text gold answers."""

import numpy as np
import pytest

from megatron_vrft.rewards import RewardInputError, get_reward

mc = get_reward("mc_accuracy")
CHOICES = ["a cup", "a phone", "a book"]


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("<think>..</think><answer>B</answer>", 1.0),
        ("<answer>B.</answer>", 1.0),
        ("<answer>(B)</answer>", 1.0),
        ("<answer>b</answer>", 1.0),
        ("<answer>B. a phone</answer>", 1.0),
        ("<answer>B) A Phone.</answer>", 1.0),
        ("<answer>(B) a  phone</answer>", 1.0),
        ("<answer>a phone</answer>", 1.0),
        ("B. a phone", 1.0),  # untagged (SFT-style target)
        ("<answer>A</answer>", 0.0),
        ("<answer>B. a cup</answer>", 0.0),  # letter and text disagree
        ("<answer>A. a phone</answer>", 0.0),  # letter and text disagree
        ("<answer>B. a tablet</answer>", 0.0),  # text names no choice
        ("<answer>D</answer>", 0.0),  # letter beyond the choices
        ("<answer>a book</answer>", 0.0),
        ("<answer></answer>", 0.0),
        ("The answer is B because ...", 0.0),
    ],
)
def test_prediction_forms(completion, expected):
    assert mc([completion], choices=[CHOICES], answer=["B"]) == [expected]


@pytest.mark.parametrize("gold", ["B", 1, np.int64(1), "a phone", "B. a phone", "<answer>B.</answer>"])
def test_gold_forms(gold):
    assert mc(["<answer>B</answer>", "<answer>C</answer>"], choices=[CHOICES] * 2, answer=[gold] * 2) == [1.0, 0.0]


def test_not_applicable_and_errors():
    assert mc(["B"], choices=[None], answer=[None]) == [None]
    with pytest.raises(RewardInputError, match="index 3 is outside the 3 choices"):
        mc(["B"], choices=[CHOICES], answer=[3])
    with pytest.raises(RewardInputError, match="matches no choice"):
        mc(["B"], choices=[CHOICES], answer=["a tablet"])
    with pytest.raises(RewardInputError, match="list of str"):
        mc(["B"], choices=["['a cup', 'a phone']"], answer=[0])
    with pytest.raises(RewardInputError, match="names letter A but another text"):
        mc(["B"], choices=[CHOICES], answer=["A. a phone"])

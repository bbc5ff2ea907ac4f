"""group_advantages against hand-computed values (unbiased group std, consecutive groups)."""

import pytest
import torch

from megatron_vrft.algos import group_advantages


def test_std_scaled_and_equal_group():
    # group 0: mean 0.75, deviations (.25, -.75, .25, .25), unbiased var .75 / 3 = .25, std .5
    # group 1: all rewards equal -> exactly 0, not NaN
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4, eps=1e-6)
    want = torch.tensor([0.25, -0.75, 0.25, 0.25]) / (0.5 + 1e-6)
    torch.testing.assert_close(adv[:4], want, rtol=0, atol=1e-7)
    assert torch.equal(adv[4:], torch.zeros(4))


def test_without_std_scaling_only_centers():
    adv = group_advantages(torch.tensor([3.0, 1.0, 0.0, 0.0]), 2, scale_by_std=False)
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]


def test_groups_are_consecutive():
    # Two prompts, G=2: [a, b] belong together, not [a, c].
    adv = group_advantages(torch.tensor([1.0, 0.0, 5.0, 5.0]), 2, scale_by_std=False)
    assert adv.tolist() == [0.5, -0.5, 0.0, 0.0]


@pytest.mark.parametrize(
    "rewards, g, msg",
    [
        (torch.zeros(6), 4, "do not split into groups of 4"),
        (torch.zeros(4), 1, "group_size must be >= 2"),
        (torch.zeros(2, 2), 2, "must be 1-D"),
        (torch.tensor([1.0, float("nan")]), 2, "must be finite"),
    ],
)
def test_bad_input(rewards, g, msg):
    with pytest.raises(ValueError, match=msg):
        group_advantages(rewards, g)

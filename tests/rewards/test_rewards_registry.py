"""Registry: built-in names, duplicates, options binding, plugins by dotted path, weighted combination."""

import logging
import math
import sys
import textwrap

import pytest

from megatron_vrft.rewards import (
    DuplicateRewardError,
    RewardConfigError,
    RewardOutputError,
    RewardSpec,
    UnknownRewardError,
    combine_rewards,
    get_reward,
    register_reward,
    registered_rewards,
)
from megatron_vrft.rewards import registry

BUILT_INS = {"accuracy", "format", "format_v2", "think_answer_format", "refuse_iou", "explain_correction", "iou_v2", "mc_accuracy", "tar"}


def test_built_ins_are_registered():
    assert BUILT_INS <= set(registered_rewards())


def test_duplicate_name_raises():
    with pytest.raises(DuplicateRewardError, match="'accuracy' is already registered by megatron_vrft.rewards.labels"):
        register_reward("accuracy")(lambda completions, **kw: [0.0] * len(completions))


def test_register_and_resolve(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_reward("length_test")
    def length(completions, *, scale=1.0, **columns):
        return [scale * len(c) for c in completions]

    assert get_reward("length_test")(["ab", "abc"]) == [2.0, 3.0]
    assert get_reward("length_test", scale=0.5)(["ab"]) == [1.0]


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownRewardError, match=r"unknown reward 'acuracy'.*accuracy, explain_correction"):
        get_reward("acuracy")


def test_unknown_option_is_rejected_at_config_time():
    with pytest.raises(RewardConfigError, match=r"'accuracy' has no option\(s\) \['lables'\]; it accepts: labels"):
        get_reward("accuracy", lables=["a"])


def test_plugin_by_dotted_path(tmp_path, monkeypatch):
    pkg = tmp_path / "my_reward_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text(
        textwrap.dedent(
            """
            def has_word(completions, *, word="cat", **columns):
                return [1.0 if word in c else 0.0 for c in completions]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        fn = get_reward("my_reward_pkg.rewards:has_word", word="dog")
        assert fn(["a dog", "a cat"]) == [1.0, 0.0]
        with pytest.raises(UnknownRewardError, match="has no callable 'nope'"):
            get_reward("my_reward_pkg.rewards:nope")
        with pytest.raises(UnknownRewardError, match="cannot import 'no_such_pkg.x'"):
            get_reward("no_such_pkg.x:fn")
    finally:
        for name in [m for m in sys.modules if m.startswith("my_reward_pkg")]:
            del sys.modules[name]


def test_combine_weighted_sum_with_none_excluded(caplog):
    completions = [
        "<think>calm</think><answer>normal</answer>",  # accuracy 1, format 1
        "<answer>abnormal</answer>",  # accuracy 0, format 0
        "<think>x</think><answer>abnormal</answer>",  # accuracy None (no solution), format 1
    ]
    specs = [("accuracy", 2.0), RewardSpec("format", 0.5), {"name": "format_v2", "weight": 1.0}]
    with caplog.at_level(logging.WARNING):
        out = combine_rewards(specs, completions, {"solution": ["normal", "normal", None]})
    assert out.per_reward == {
        "accuracy": [1.0, 0.0, None],
        "format": [1.0, 0.0, 1.0],
        "format_v2": [0.0, 0.0, 0.0],
    }
    assert out.total == [2.5, 0.0, 0.5]
    assert out.means() == {"accuracy": 0.5, "format": pytest.approx(2 / 3), "format_v2": 0.0}
    assert out.none_counts() == {"accuracy": 1, "format": 0, "format_v2": 0}
    assert "no applicable reward" not in caplog.text


def test_combine_all_none_gives_zero_and_warns(caplog):
    with caplog.at_level(logging.WARNING):
        out = combine_rewards([("accuracy", 1.0)], ["<answer>normal</answer>"], {"solution": [None]})
    assert out.total == [0.0] and out.means() == {"accuracy": None}
    assert "1 of 1 completions have no applicable reward" in caplog.text


def test_combine_options_and_validation(monkeypatch):
    out = combine_rewards(
        [("accuracy", 1.0, {"labels": ["yes", "no"]})], ["<answer>yes</answer>"], {"solution": ["yes"]}
    )
    assert out.total == [1.0]
    with pytest.raises(RewardConfigError, match="configured twice"):
        combine_rewards([("format", 1.0), ("format", 2.0)], ["x"], {})
    with pytest.raises(RewardConfigError, match=r"rewards\[0\].weight: must be a finite number"):
        combine_rewards([RewardSpec("format", math.nan)], ["x"], {})

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_reward("bad_len")(lambda completions, **kw: [1.0])
    register_reward("bad_nan")(lambda completions, **kw: [math.nan] * len(completions))
    register_reward("bad_type")(lambda completions, **kw: ["1"] * len(completions))
    with pytest.raises(RewardOutputError, match="'bad_len' returned 1 values for 2 completions"):
        combine_rewards([("bad_len", 1.0)], ["a", "b"], {})
    with pytest.raises(RewardOutputError, match="return None for 'not applicable'"):
        combine_rewards([("bad_nan", 1.0)], ["a"], {})
    with pytest.raises(RewardOutputError, match="value 0 is str"):
        combine_rewards([("bad_type", 1.0)], ["a"], {})

"""Rewards as the GRPO step uses them: specs checked at config load (errors name the key), one
RewardSpec type, a raising reward gives None for its samples (logged, counted), empty/truncated
completions score normally, the judge runs in the background and a judge that is down gives None."""

import json
import logging
import time

import pytest

from megatron_vrft import config as config_mod
from megatron_vrft.config import ConfigError, load_config
from megatron_vrft.rewards import (
    RewardConfigError, RewardOutputError, RewardSpec, combine_rewards, register_reward, registry, start_rewards,
)
from megatron_vrft.runtime.distributed import free_port

BASE = """\
mode: grpo
model: {hf_path: /models/qwen}
data: {train_path: train.json}
grpo:
  num_generations: 2
  rewards:
    - {name: accuracy, weight: 1.0}
"""


def _load(tmp_path, extra_rewards: str, overrides=()):
    path = tmp_path / "cfg.yaml"
    path.write_text(BASE + extra_rewards)
    return load_config(str(path), list(overrides), world_size=1), str(path)


@pytest.mark.parametrize(
    "reward, expected",
    [
        ("    - {name: acuracy}\n", r"cfg.yaml:8: grpo.rewards\[1\].name: unknown reward 'acuracy'; registered rewards: accuracy"),
        ("    - {name: 'no_such_pkg.mod:fn'}\n", r"cfg.yaml:8: grpo.rewards\[1\].name: reward plugin 'no_such_pkg.mod:fn': cannot import"),
        ("    - {name: 'json:no_such_fn'}\n", r"grpo.rewards\[1\].name: .*json has no callable 'no_such_fn'"),
        ("    - {name: format, options: {lables: [a]}}\n", r"grpo.rewards\[1\].options: reward 'format' has no option\(s\) \['lables'\]"),
        ("    - {name: format, options: {labels: normal}}\n", r"grpo.rewards\[1\].options: .*labels must be a list of strings"),
        ("    - {name: tar, options: {model: judge}}\n", r"grpo.rewards\[1\].options: judge needs `base_url` and `model`"),
        ("    - {name: tar, options: {base_url: 'http://x/v1', model: m, similarity_threshold: 3}}\n",
         r"grpo.rewards\[1\].options: reward 'tar': similarity_threshold must be in \[-1, 1\]"),
        ("    - {name: format, weight: .nan}\n", r"grpo.rewards\[1\].weight: must be a finite number"),
        ("    - {name: accuracy}\n", r"grpo.rewards\[1\].name: reward 'accuracy' is configured twice"),
    ],
)
def test_bad_reward_specs_fail_at_config_load(tmp_path, reward, expected):
    with pytest.raises(ConfigError, match=expected):
        _load(tmp_path, reward)


def test_override_of_the_rewards_is_checked_too(tmp_path):
    with pytest.raises(ConfigError, match=r"grpo.rewards\[0\].name: unknown reward 'nope'"):
        _load(tmp_path, "", ["grpo.rewards=[{name: nope}]"])
    with pytest.raises(ConfigError, match=r"command line: grpo.rewards.0.name: cannot set one element of a list"):
        _load(tmp_path, "", ["grpo.rewards.0.name=format"])


def test_one_reward_spec_type_from_config_to_scores(tmp_path):
    assert RewardSpec is config_mod.RewardSpec is registry.RewardSpec
    cfg, _ = _load(tmp_path, "    - {name: format, weight: 0.5, options: {labels: [normal, abnormal]}}\n"
                             "    - {name: 'json:loads'}\n")
    specs = cfg.grpo.rewards
    assert all(isinstance(s, RewardSpec) for s in specs) and specs[2].name == "json:loads"
    out = combine_rewards(specs[:2], ["<think>a</think><answer>normal</answer>"], {"solution": ["normal"]})
    assert out.total == [1.5] and out.errors == {"accuracy": 0, "format": 0}


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_reward("flaky_test")
    def flaky(completions, **columns):
        if any("BOOM" in c for c in completions):
            raise RuntimeError("cannot score this one")
        return [float(len(c)) for c in completions]

    @register_reward("nan_test")
    def nan_reward(completions, **columns):
        return [float("nan")] * len(completions)

    return flaky


def test_a_raising_reward_gives_none_for_that_sample(flaky, caplog):
    completions = ["ab", "xBOOMx", "abc"]
    with caplog.at_level(logging.WARNING):
        out = combine_rewards([("flaky_test", 2.0), ("format", 1.0)], completions, {"solution": ["a", "b", "c"]})
    assert out.per_reward["flaky_test"] == [2.0, None, 3.0]
    assert out.total == [4.0, 0.0, 6.0]
    assert out.errors == {"flaky_test": 1, "format": 0} and out.none_counts()["flaky_test"] == 1
    assert "reward 'flaky_test' raised for 1 of 3 completions; they get None (first error: RuntimeError: cannot score" in caplog.text
    # bugs that repeat every step still raise
    with pytest.raises(RewardOutputError, match="return None for 'not applicable'"):
        combine_rewards([("nan_test", 1.0)], ["a"], {})
    with pytest.raises(RewardConfigError, match=r"rewards\[0\].name: unknown reward"):
        combine_rewards([("nope", 1.0)], ["a"], {})


COLUMNS = {
    "solution": ["normal"] * 2, "gt_span": [[1.0, 2.0]] * 2, "duration": [10.0] * 2,
    "task_type": ["answerable", "refusable"], "reference_queries": [["a dog runs"]] * 2,
    "choices": [["red", "blue"]] * 2, "answer": ["A"] * 2,
}


@pytest.mark.parametrize("name", ["accuracy", "format", "format_v2", "think_answer_format", "iou_v2", "refuse_iou",
                                  "mc_accuracy", "explain_correction"])
def test_empty_and_truncated_completions_score_their_normal_value(name):
    # "" = EOS straight away; the second is cut by max_new_tokens inside the answer block
    out = combine_rewards([(name, 1.0)], ["", "<think>the man walks</think> <answer>norm"], COLUMNS)
    assert out.per_reward[name] == [0.0, 0.0] and out.errors[name] == 0


def _tar_spec(base_url, model, **extra):
    return RewardSpec("tar", 1.0, {"base_url": base_url, "model": model, "timeout_s": 1.0, "max_retries": 0,
                                   "backoff_s": 0.0, **extra})


GT = {"00:12": "The sauce looks thick."}
# The fake judge finds no claims in these thinks ({}): tar = 0 without an SBERT pass.
TAR_COMPLETIONS = ["<think>it is thick</think><answer>A</answer>", "", "<think>still thick</think><answer>B"]


def test_judge_runs_in_the_background_and_overlaps(fake_judge):
    base_url, server = fake_judge
    server.delay_s = 0.6
    start = time.perf_counter()
    job = start_rewards([("format", 1.0), _tar_spec(base_url, "wiring-bg", timeout_s=5.0)], TAR_COMPLETIONS,
                        {"temporal_grounding": [GT] * 3})
    started = time.perf_counter() - start
    assert started < 0.4 and not job.done()  # the judge is still answering: the caller goes on
    time.sleep(0.7)  # the trainer's logprob passes
    out = job.result()
    assert out.per_reward["tar"] == [0.0, 0.0, 0.0]  # "" has no think: 0 without a judge call
    assert out.per_reward["format"] == [0.0, 0.0, 0.0]
    # result() waited only for what was left after the caller's 0.7 s of other work
    assert out.seconds["tar"] >= 0.6 and job.wait_seconds <= out.seconds["tar"] - 0.6
    assert server.count("it is thick") == 2  # extraction + consistency
    assert job.result() is out


def test_judge_down_gives_none_not_a_crash(caplog):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with caplog.at_level(logging.WARNING):
        out = combine_rewards([("format", 1.0), _tar_spec(dead, "wiring-down")], TAR_COMPLETIONS,
                              {"temporal_grounding": [GT] * 3})
    assert out.per_reward["tar"] == [None, 0.0, None]
    assert out.none_counts()["tar"] == 2 and out.errors["tar"] == 0
    assert out.total == [0.0, 0.0, 0.0]
    assert "calls failed" in caplog.text and json.dumps(out.per_reward)


def test_think_answer_format_takes_any_answer():
    out = combine_rewards([("think_answer_format", 1.0)], [
        "<think>the chef adds water</think>\n<answer>B. to thin the sauce</answer>",
        "<think></think><answer></answer>",
        "<answer>B</answer>",
        "<think>x</think><answer>B</answer> trailing",
    ], {})
    assert out.per_reward["think_answer_format"] == [1.0, 1.0, 0.0, 0.0]

"""The tiny CPU variants of the GRPO recipes (examples/configs/tiny/) run through examples/run_grpo.py,
and bad input does not stop a step.

- rarft_grpo (HF engine): format_v2 + refuse_iou + explain_correction (SBERT), frozen ViT with a
  trained merger (the step's VisionCache keeps the merger's input; the ViT runs once per prompt).
- video_r2_grpo (HF engine): TAR scored by the fake judge (tests/rewards/fake_judge.py) in a
  background thread while the logprob passes run; one completion per prompt is a scripted
  ``<think>`` text (teacher-forced logprobs, `_grpo_scripted.py`): TAR only asks the judge about those.
- bad input (video_r2_grpo, HF engine): the judge is down (nothing listens at its URL), a plugin
  reward raises for odd-length completions, and the engine's first completion of every prompt is
  replaced by an empty one (0 tokens), no reference model (kl_beta 0): the run finishes, TAR is None for the sample it had to ask
  about (counted), the raising samples are counted, the empty completion is counted.
- rbft_grpo (HF engine) on its own Open-R1-Video JSONL is the e2e tests' run; here it runs on the
  SmartHome-Bench CSV (``smarthome_vad``), the format the seed's labels come from: accuracy + format.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_vrft.runtime.distributed import free_port
from megatron_vrft.testing.grpo_run import ROOT, _env, launch_grpo
from megatron_vrft.trainer.metrics import read_metrics

TINY = ROOT / "examples/configs/tiny"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny configs' inputs (the commands in their headers), under a temporary directory."""
    root = tmp_path_factory.mktemp("tiny_recipes")
    for cmd in (["tools/make_tiny_model.py", "--out", str(root / "hf"), "--rollout"],
                ["tools/make_synthetic.py", "--out", str(root / "data"), "--formats", "rarft_riq,video_r2,smarthome_vad"]):
        subprocess.run([sys.executable, *cmd], cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=120)
    return root


def _paths(root: Path, fmt: str, path: str) -> list[str]:
    out = [f"model.hf_path={root / 'hf'}", f"data.train_path={root / 'data' / path}",
           f"data.media_root={root / 'data/videos'}"]
    if fmt == "video_r2":
        out.append(f"data.options.subtitles_root={root / 'data/video_r2/subtitles'}")
    return out


def test_tiny_rarft_grpo(inputs):
    out = inputs / "rarft"
    proc = launch_grpo(TINY / "rarft_grpo.yaml", _paths(inputs, "rarft_riq", "rarft_riq/anno.json")
                       + ["rollout.engine=hf", "grpo.max_steps=1"], out=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = read_metrics(out)
    assert r["logprob_gap"] <= 1e-4 and r["completions"] == 8
    for name in ("format_v2", "refuse_iou", "explain_correction"):
        assert isinstance(r[f"reward/{name}"], float) and r[f"reward_errors/{name}"] == 0  # computed, finite
    assert r["vit_calls"] == 2.0  # frozen ViT: once per prompt (2 prompts), shared by the ref and update passes


def test_tiny_rbft_grpo_on_smarthome_csv(inputs):
    out = inputs / "rbft_csv"
    proc = launch_grpo(TINY / "rbft_grpo.yaml", _paths(inputs, "smarthome_vad", "smarthome_vad/Video_Annotation.csv")
                       + ["data.format=smarthome_vad", "rollout.engine=hf", "grpo.max_steps=1"], out=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = read_metrics(out)
    assert r["completions"] == 4 and r["logprob_gap"] <= 1e-4
    for name in ("accuracy", "format"):  # the CSV's labels reach the rewards: computed for every completion
        assert isinstance(r[f"reward/{name}"], float) and r[f"reward_none/{name}"] == 0


def _tar_overrides(base_url: str) -> list[str]:
    return [f"grpo.rewards=[{{name: think_answer_format}}, {{name: tar, options: {{base_url: '{base_url}', "
            "model: fake-judge, api_key_env: JUDGE_API_KEY, timeout_s: 2.0, max_retries: 1}}]"]


def _scripted(inputs, out, overrides, script):
    """tests/trainer/_grpo_scripted.py (HF engine, 1 step of video_r2_grpo) with ``GRPO_SCRIPT=script``."""
    args = ["--config", str(TINY / "video_r2_grpo.yaml"), *_paths(inputs, "video_r2", "video_r2/grpo.json"),
            *overrides, "rollout.engine=hf", "grpo.max_steps=1", f"logging.output_dir={out}"]
    proc = subprocess.run([sys.executable, str(ROOT / "tests/trainer/_grpo_scripted.py"), *args], capture_output=True,
                          text=True, timeout=300, env={**_env(), "JUDGE_API_KEY": "test", "GRPO_SCRIPT": script},
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = read_metrics(out)
    assert r["completions"] == 8 and r["logprob_gap"] <= 1e-4 and r["vit_calls"] == 1.0
    return r


def test_tiny_video_r2_grpo_with_judge(inputs):
    sys.path.insert(0, str(ROOT / "tests/rewards"))
    from fake_judge import start_fake_judge

    server, base_url, state = start_fake_judge()
    try:
        r = _scripted(inputs, inputs / "video_r2", _tar_overrides(base_url), "think1")
    finally:
        server.shutdown()
        server.server_close()
    assert state.count("00:01") >= 2  # claim extraction + consistency for the completion with a <think>
    assert r["reward_none/tar"] == 0 and r["reward_errors/tar"] == 0 and 0.0 <= r["reward/tar"] <= 1.0
    assert r["reward/think_answer_format"] > 0  # the scripted completion is well formed


def test_bad_input_step_goes_on(inputs):
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    rewards = _tar_overrides(down)[0][:-1] + ", {name: 'tests.trainer.grpo_rewards:raises_on_odd'}]"
    r = _scripted(inputs, inputs / "bad", [rewards, "grpo.kl_beta=0"], "empty0,think1")
    assert r["completions_empty"] == 1
    assert r["kl"] == "nan"  # kl_beta 0: no reference model, KL not measured (metrics.jsonl writes nan as "nan")
    assert r["reward_none/tar"] == 1  # judge down: None for the one completion it had to ask about
    errors = r["reward_errors/tests.trainer.grpo_rewards:raises_on_odd"]
    assert errors > 0 and r["reward_none/tests.trainer.grpo_rewards:raises_on_odd"] == errors
    assert isinstance(r["loss"], float) and r["update_skipped"] == 0 and r["grad_norm"] > 0

"""examples/run_grpo.py's entry: overrides without --config refused (no --config runs the demo, tests/demo),
one-line config errors with exit status 2."""

import subprocess
import sys

from megatron_vrft.testing.grpo_run import ROOT, _env

SCRIPT = str(ROOT / "examples/run_grpo.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=_env(), cwd=ROOT,
                          timeout=120)


def test_overrides_without_config_print_usage():
    proc = _run("grpo.max_steps=2")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: run_grpo.py")
    assert "error: key=value overrides need --config FILE" in proc.stderr


def test_config_errors_are_one_line():
    proc = _run("--config", str(ROOT / "examples/configs/tiny/rbft_grpo.yaml"), "grpo.num_generations=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {ROOT}/examples/configs/tiny/rbft_grpo.yaml:19: grpo.num_generations: GRPO needs at least 2 "
        "completions per prompt"]
    proc = _run("--config", str(ROOT / "examples/configs/demo_sft_cpu.yaml"))
    assert proc.returncode == 2 and "run_grpo.py runs mode 'grpo', the config says 'sft'" in proc.stderr


def test_help_lists_config_keys():
    proc = _run("--help")
    assert proc.returncode == 0 and "grpo.updates_per_rollout (default 1)" in proc.stdout


def test_grpo_limits_checked_before_building():
    proc = _run("--config", str(ROOT / "examples/configs/tiny/rbft_grpo.yaml"), "rollout.max_model_len=512")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: rollout.max_model_len: 512 is less than data.max_seq_len = 1024: the engine could not hold a "
        "full-length prompt + completion"]
    proc = _run("--config", str(ROOT / "examples/configs/tiny/rbft_grpo.yaml"), "rollout.tensor_parallel_size=2")
    assert proc.returncode == 2 and "rollout.tensor_parallel_size" in proc.stderr

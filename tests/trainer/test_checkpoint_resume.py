"""Exact resume through ``examples/run_sft.py`` (one process, tiny model, fp32 CPU).

- uninterrupted: 6 steps, checkpoints every 2 steps;
- killed: the same run SIGKILLed inside the save of step 4 (``MEGATRON_VRFT_TEST_SAVE_PAUSE`` holds
  it after the shards are written, before the directory is completed); then no directory looks
  complete except step_2, and re-running the same command resumes from step_2 and logs the same
  losses for every step as the uninterrupted run (metrics.jsonl holds each step once).
"""

import signal
import time

import pytest

from megatron_vrft.checkpoint.atomic import is_complete
from megatron_vrft.trainer.checkpoint import latest_checkpoint, list_checkpoints
from tests.trainer._sft_runs import losses, make_assets, run_sft, start_sft, write_config

TOL = 1e-6


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def uninterrupted(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    run_sft(write_config(out / "sft.yaml", assets, out))
    return out, losses(out)


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_sigkill_during_save_resumes_from_previous_checkpoint(assets, uninterrupted, tmp_path):
    full_dir, full = uninterrupted
    assert sorted(full) == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in list_checkpoints(full_dir / "ckpt")] == [2, 4, 6]
    cfg = write_config(tmp_path / "sft.yaml", assets, tmp_path)
    ckpt = tmp_path / "ckpt"
    proc = start_sft(cfg, env={"MEGATRON_VRFT_TEST_SAVE_PAUSE": "4:60"})
    try:
        # the save of step 4 has written its shards (the torch_dist metadata exists) and is paused
        _wait_for(lambda: any((p / ".metadata").is_file() for p in ckpt.glob("step_4.tmp-*")), 150, "the step-4 save")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in ckpt.iterdir())
    assert leftovers[0] == "step_2" and leftovers[1].startswith("step_4.tmp-"), leftovers
    assert not (ckpt / "step_4").exists() and not is_complete(ckpt / leftovers[1])
    assert latest_checkpoint(ckpt) == ckpt / "step_2"

    p = run_sft(cfg)
    assert "resumed from" in p.stderr and "step_2" in p.stderr
    resumed = losses(tmp_path)
    assert sorted(resumed) == sorted(full)
    diff = max(abs(resumed[s] - full[s]) for s in full)
    assert diff <= TOL, (resumed, full)
    # the crashed save's temp dir was cleaned by the next save's rotation (its process is gone)
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_2", "step_4", "step_6"]

"""SFT through ``examples/run_sft.py``: the loss falls, and TP=2, PP=2, DP=2 (plain and with the
distributed optimizer) give the single-process losses and grad norms for the first steps.

Tiny Qwen2.5-VL (ViT + merger + 3 LLM layers), synthetic videos (`testing.sft_run`), fp32 on CPU,
global batch 4 in micro-batches of 2 THD-packed samples, Adam lr 1e-3 with clipping at 1.0 (active:
the grad norms are > 1). Tolerance: 1e-5 absolute on the loss, 1e-4 on the grad norm (fp32; the
layouts differ only in summation order: measured differences are ~1e-7).
"""

import pytest

from megatron_vrft.testing.sft_run import launch_sft, write_tiny_sft
from megatron_vrft.trainer.metrics import read_metrics

STEPS = 3
LOSS_TOL, NORM_TOL = 1e-5, 1e-4
LAYOUTS = {
    "tp2": ["parallel.tp=2"],
    "pp2": ["parallel.pp=2"],
    "dp2": [],
    "dp2_distopt": ["parallel.use_distributed_optimizer=true"],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_parallel")
    return root, write_tiny_sft(root)


def _run(setup, name, overrides, nproc, steps):
    root, cfg = setup
    proc = launch_sft(cfg, [f"sft.max_steps={steps}", *overrides], nproc=nproc, out=root / name)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-3000:]}"
    records = [r for r in read_metrics(root / name) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    return records


@pytest.fixture(scope="module")
def reference(setup):
    return _run(setup, "tp1", [], 1, 6)


def test_loss_falls_and_metrics_are_complete(reference):
    losses = [r["loss"] for r in reference]
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert all(r["grad_norm"] > 1.0 for r in reference), "clipping at 1.0 is never exercised"
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "samples_skipped", "time/step"):
        assert key in reference[0], key
    assert reference[0]["samples"] == 4 and reference[0]["micro_batches"] == 2


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_single_process(setup, reference, layout):
    records = _run(setup, layout, LAYOUTS[layout], 2, STEPS)
    for got, want in zip(records, reference[:STEPS]):
        assert abs(got["loss"] - want["loss"]) <= LOSS_TOL, (layout, got["step"], got["loss"], want["loss"])
        assert abs(got["grad_norm"] - want["grad_norm"]) <= NORM_TOL, (layout, got["grad_norm"], want["grad_norm"])
        assert got["tokens"] == want["tokens"] and got["samples"] == want["samples"]

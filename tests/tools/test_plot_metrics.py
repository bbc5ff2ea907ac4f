"""tools/plot_metrics.py: metrics.jsonl records with the trainers' real key names (a GRPO step of
trainer/grpo.py with three rewards, SFT steps and eval records of trainer/sft.py / trainer/eval.py)
-> one PNG per panel + an overview, each a real, non-trivial image; keys land in the right panels
(counts never on a rate's axis); bad input is a one-line error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
from plot_metrics import _running_mean, panels_of, plot_run, read_series  # noqa: E402

REWARDS = ("accuracy", "format", "tests.trainer.grpo_rewards:letter_share")


def _grpo_record(s: int, rng) -> dict:
    """The keys a GRPO step logs (as written by a tiny examples/run_grpo.py run, HF engine)."""
    acc = min(1.0, 0.3 + 0.005 * s + 0.05 * rng.standard_normal())
    rec = {"step": s, "loss": 0.05 * rng.standard_normal(), "grad_norm": "nan" if s == 7 else 2.0, "reward": acc + 1.0,
           "reward_std": 0.1, "kl": 1e-3 * s, "clip_frac": 0.0, "entropy": 5.4, "ratio": 1.0,
           "completion_len": 7.5 + rng.random(), "completions_empty": 0.0, "completions_truncated": 4.0,
           "logprob_gap": 1e-6, "vit_calls": 2.0, "weight_sync_gb": 0.0025, "samples": 2, "completions": 4.0,
           "tokens": 405.0, "samples_skipped": 0, "update_skipped": 0.0, "lr": 1e-3, "tokens_per_s": 900.0,
           "time/data": 0.3, "time/rollout": 0.03, "time/reward": 0.001, "time/logprob": 0.01, "time/update": 0.04,
           "time/weight_sync": 0.003, "time/step": 0.4}
    for name in REWARDS:
        rec[f"reward/{name}"] = {"accuracy": acc, "format": 1.0}.get(name, math.nan if s == 3 else 0.2)
        rec[f"reward_errors/{name}"] = 0.0
        rec[f"reward_none/{name}"] = 0.0
    return rec


def _sft_records(s: int, rng) -> list[dict]:
    rec = {"step": s, "loss": 2.0 * math.exp(-s / 20) + 0.05 * rng.random(), "grad_norm": 4.0, "lr": 1e-3,
           "samples": 4, "tokens": 700, "target_tokens": 284, "samples_skipped": 0, "micro_batches": 2,
           "update_skipped": 0, "lr/vision": 1e-3, "lr/merger": 1e-3, "time/data": 0.8, "time/forward_backward": 0.9,
           "time/optimizer": 0.007, "tokens_per_s": 420.0, "time/step": 1.7}
    out = [rec]
    if s % 20 == 0:
        rec["time/eval"] = 0.7
        out.append({"step": s, "eval/loss": 1.0 / s, "eval/samples": 8, "eval/accuracy": 0.5 + s / 200,
                    "eval/accuracy_samples": 8})
    return out


def _write_run(run: Path, kind: str, steps: int = 60) -> None:
    run.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for s in range(1, steps + 1):
        records += [_grpo_record(s, rng)] if kind == "grpo" else _sft_records(s, rng)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_grpo_panels_and_series(tmp_path):
    _write_run(tmp_path / "run", "grpo")
    series = read_series(tmp_path / "run" / "metrics.jsonl")
    assert len(series["loss"][0]) == 60 and len(series["grad_norm"][0]) == 59  # the "nan" string is skipped
    assert len(series[f"reward/{REWARDS[2]}"][0]) == 59  # and a NaN value
    panels = panels_of(series)
    assert panels["loss"] == ["loss"] and panels["kl"] == ["kl"] and panels["completion_length"] == ["completion_len"]
    assert panels["reward"] == ["reward", *sorted(f"reward/{n}" for n in REWARDS), "reward_std"]
    assert panels["reward_issues"] == sorted(f"reward_{k}/{n}" for k in ("errors", "none") for n in REWARDS)
    assert panels["accuracy"] == ["reward/accuracy"]  # not reward_errors/accuracy, reward_none/accuracy
    assert panels["time"] == sorted(k for k in series if k.startswith("time/")) and len(panels["time"]) == 7
    assert panels["lr"] == ["lr"] and panels["grad_norm"] == ["grad_norm"] and panels["throughput"] == ["tokens_per_s"]
    assert panels["other"] == ["clip_frac", "completions", "completions_empty", "completions_truncated", "entropy",
                               "logprob_gap", "ratio", "samples", "samples_skipped", "tokens", "update_skipped",
                               "vit_calls", "weight_sync_gb"]


def test_sft_panels_and_series(tmp_path):
    _write_run(tmp_path / "run", "sft")
    series = read_series(tmp_path / "run" / "metrics.jsonl")
    assert series["eval/accuracy"] == ([20, 40, 60], [0.6, 0.7, 0.8])
    panels = panels_of(series)
    assert panels["loss"] == ["eval/loss", "loss"] and panels["accuracy"] == ["eval/accuracy"]
    assert panels["lr"] == ["lr", "lr/merger", "lr/vision"]
    assert "time/eval" in panels["time"] and "reward" not in panels
    assert panels["other"] == ["eval/accuracy_samples", "eval/samples", "micro_batches", "samples", "samples_skipped",
                               "target_tokens", "tokens", "update_skipped"]


def test_running_mean_is_centred():
    """Hand-computed: a centred window (shrinking at the ends), so a linear trend is not shifted."""
    assert _running_mean([1, 2, 3, 4, 5, 6], 3) == [1.5, 2.0, 3.0, 4.0, 5.0, 5.5]
    assert _running_mean([1, 2, 3, 4, 5], 4) == [1.5, 2.0, 2.5, 3.5, 4.0]


def test_cli_writes_plausible_pngs(tmp_path):
    _write_run(tmp_path / "run", "grpo")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_metrics.py"), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    paths = [Path(p) for p in proc.stdout.split()]
    names = [p.name for p in paths]
    assert names == ["loss.png", "reward.png", "reward_issues.png", "accuracy.png", "kl.png", "completion_length.png",
                     "time.png", "lr.png", "grad_norm.png", "throughput.png", "other.png", "overview.png"]
    for p in paths:
        assert p.parent == tmp_path / "run" / "plots"
        img = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
        assert img.shape[0] >= 300 and img.shape[1] >= 600
        # drawn, not blank: a white canvas with a fair amount of ink (axes, curves, labels)
        ink = (img < 200).mean()
        assert 0.01 < ink < 0.5, (p.name, ink)
    # the overview holds the 10 panels (2 columns) and the 13 small plots (4 columns) below them
    assert Image.open(paths[-1]).size[1] > 2 * Image.open(paths[0]).size[1]


def test_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_metrics.py"), str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "no metrics.jsonl" in proc.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\n{"loss": 2}\n')
    try:
        plot_run(tmp_path / "bad")
    except ValueError as e:
        assert "metrics.jsonl:2: not a metrics record with a 'step'" in str(e)
    else:
        raise AssertionError("a record without a step must be an error")

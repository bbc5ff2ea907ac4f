"""tools/plot_metrics.py: a synthetic GRPO+SFT metrics.jsonl -> one PNG per panel + an overview,
each a real, non-trivial image; keys land in the right panels; bad input is a one-line error."""

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
from plot_metrics import panels_of, plot_run, read_series  # noqa: E402


def _write_run(run: Path, steps: int = 60) -> None:
    run.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for s in range(1, steps + 1):
        acc = min(1.0, 0.6 + 0.005 * s + 0.05 * rng.standard_normal())
        rec = {"step": s, "loss": 2.0 * math.exp(-s / 20) + 0.05 * rng.random(), "lr": 1e-4,
               "reward/accuracy": acc, "reward/format": 1.0, "reward/total": acc + 1.0, "kl": 1e-3 * s,
               "completion_length": int(50 + rng.integers(-3, 4)), "time/rollout": 1.5, "time/train": 0.8,
               "grad_norm": "nan" if s == 7 else 0.5, "note": "text values are ignored"}
        lines.append(json.dumps(rec))
        if s % 20 == 0:
            lines.append(json.dumps({"step": s, "eval/loss": 1.0 / s, "eval/accuracy": 0.5 + s / 200}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_panels_and_series(tmp_path):
    _write_run(tmp_path / "run")
    series = read_series(tmp_path / "run" / "metrics.jsonl")
    assert len(series["loss"][0]) == 60 and series["eval/accuracy"] == ([20, 40, 60], [0.6, 0.7, 0.8])
    assert len(series["grad_norm"][0]) == 59  # the "nan" string is skipped
    assert "note" not in series
    panels = panels_of(series)
    assert panels["loss"] == ["eval/loss", "loss"]
    assert panels["reward"] == ["reward/accuracy", "reward/format", "reward/total"]
    assert panels["accuracy"] == ["eval/accuracy", "reward/accuracy"]
    assert panels["kl"] == ["kl"] and panels["completion_length"] == ["completion_length"]
    assert panels["time"] == ["time/rollout", "time/train"] and panels["lr"] == ["lr"]
    assert panels["other"] == ["grad_norm"]


def test_cli_writes_plausible_pngs(tmp_path):
    _write_run(tmp_path / "run")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_metrics.py"), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    paths = [Path(p) for p in proc.stdout.split()]
    names = [p.name for p in paths]
    assert names == ["loss.png", "reward.png", "accuracy.png", "kl.png", "completion_length.png", "time.png",
                     "lr.png", "other.png", "overview.png"]
    for p in paths:
        assert p.parent == tmp_path / "run" / "plots"
        img = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
        assert img.shape[0] >= 300 and img.shape[1] >= 600
        # drawn, not blank: a white canvas with a fair amount of ink (axes, curves, labels)
        ink = (img < 200).mean()
        assert 0.01 < ink < 0.5, (p.name, ink)


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

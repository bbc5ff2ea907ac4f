"""Training curves of a run, from its ``metrics.jsonl``, as PNG files.

    python tools/plot_metrics.py RUN_DIR [--out DIR] [--smooth N]

RUN_DIR is a run's ``logging.output_dir`` (or the metrics.jsonl itself). One PNG per panel goes to
``RUN_DIR/plots`` (or ``--out``), plus ``overview.png`` with every panel:

    loss               keys ending in "loss" (SFT loss, GRPO policy loss, eval/loss)
    reward             keys starting with "reward" (one curve per reward, and the total)
    accuracy           keys containing "accuracy" (reward and eval accuracy)
    kl                 keys whose last part contains "kl"
    completion_length  keys containing "length" or ending in "_len"
    time               phase times ("time/<phase>", seconds per step)
    lr                 learning rate(s) ("lr", ".../lr")
    other              the remaining numbers (lr, grad norm, ...)

A key can be in several panels (``reward/accuracy`` is a reward and an accuracy). Eval records
(``eval/...`` keys) are drawn as markers, step records as lines, with a running mean over
``--smooth`` steps on top when a curve has more points than that. "nan"/"inf" strings are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = {
    "loss": lambda k: k.endswith("loss"),
    "reward": lambda k: k.startswith("reward"),
    "accuracy": lambda k: "accuracy" in k,
    "kl": lambda k: "kl" in k.rsplit("/", 1)[-1],
    "completion_length": lambda k: "length" in k or k.endswith("_len"),
    "time": lambda k: k.startswith("time/"),
    "lr": lambda k: k == "lr" or k.endswith("/lr"),
}


def read_series(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` of every numeric key; a malformed line is an error naming it."""
    series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a metrics record with a 'step' ({e})") from None
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            series[key][0].append(step)
            series[key][1].append(float(value))
    return dict(series)


def panels_of(keys) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key in sorted(keys):
        names = [name for name, match in PANELS.items() if match(key)] or ["other"]
        for name in names:
            out.setdefault(name, []).append(key)
    return {name: out[name] for name in [*PANELS, "other"] if name in out}


def _running_mean(values: list[float], n: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= n:
            total -= values[i - n]
        out.append(total / min(i + 1, n))
    return out


def _draw(ax, name: str, keys: list[str], series, smooth: int) -> None:
    for key in keys:
        steps, values = series[key]
        if key.startswith("eval/"):
            ax.plot(steps, values, "o-", ms=4, label=key)
        elif len(values) > smooth > 1:
            line, = ax.plot(steps, values, alpha=0.3, lw=0.8)
            ax.plot(steps, _running_mean(values, smooth), color=line.get_color(), lw=1.6, label=f"{key} (mean of {smooth})")
        else:
            ax.plot(steps, values, lw=1.4, label=key)
    ax.set_title(name.replace("_", " "))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_run(run: str | Path, out: str | Path | None = None, smooth: int = 10) -> list[Path]:
    """Writes the PNGs (see the module docstring); returns their paths, overview.png last."""
    run = Path(run)
    path = run if run.is_file() else run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (give a run's logging.output_dir)")
    series = read_series(path)
    if not series:
        raise ValueError(f"{path}: no numeric metrics to plot")
    out_dir = Path(out) if out is not None else path.parent / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    panels = panels_of(series)
    written = []
    for name, keys in panels.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        _draw(ax, name, keys, series, smooth)
        fig.tight_layout()
        written.append(out_dir / f"{name}.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.6 * rows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels.items()):
        _draw(ax, name, keys, series, smooth)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(str(path.parent))
    fig.tight_layout()
    written.append(out_dir / "overview.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Plot a run's metrics.jsonl to PNG files.")
    ap.add_argument("run_dir", help="the run's logging.output_dir (or its metrics.jsonl)")
    ap.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    ap.add_argument("--smooth", type=int, default=10, help="running-mean window in steps (default 10; 1 = off)")
    args = ap.parse_args(argv)
    try:
        paths = plot_run(args.run_dir, args.out, args.smooth)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())

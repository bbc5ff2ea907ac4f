"""Training curves of a run, from its ``metrics.jsonl``, as PNG files.

    python tools/plot_metrics.py RUN_DIR [--out DIR] [--smooth N]

RUN_DIR is a run's ``logging.output_dir`` (or the metrics.jsonl itself). One PNG per panel goes to
``RUN_DIR/plots`` (or ``--out``), plus ``overview.png`` with every panel. Panels, by the trainers'
key names (trainer/grpo.py, trainer/sft.py, trainer/eval.py, trainer/metrics.py):

    loss               keys ending in "loss" (SFT loss, GRPO policy loss, eval/loss)
    reward             "reward" (GRPO total, with a +- reward_std band) and "reward/<name>" per reward
    reward_issues      "reward_errors/<name>", "reward_none/<name>" (counts per step)
    accuracy           keys whose last part contains "accuracy" (reward/accuracy, eval/accuracy),
                       not the counts ("..._samples")
    kl                 keys whose last part contains "kl"
    completion_length  keys containing "length" or ending in "_len"
    time               phase times ("time/<phase>", seconds per step; time/step is the whole step)
    lr                 learning rate(s): "lr", "lr/<group>" (lr/vision, lr/merger)
    grad_norm          "grad_norm"
    throughput         "tokens_per_s"
    other              every remaining number in its own small plot (own y scale): counts such as
                       samples, tokens, completions_truncated, and GRPO's entropy, ratio, clip_frac

A key is in every panel that matches it, "other" only when none does. Eval records (``eval/...``
keys) and short series are drawn with markers; a curve with at least 3x ``--smooth`` points gets a
centred running mean over ``--smooth`` steps on top. Non-numbers and non-finite values ("nan" strings, NaN)
are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

def _last(k: str) -> str:
    return k.rsplit("/", 1)[-1]


_REWARD_ISSUES = ("reward_errors/", "reward_none/")

PANELS = {
    "loss": lambda k: k.endswith("loss"),
    "reward": lambda k: k in ("reward", "reward_std") or k.startswith("reward/"),
    "reward_issues": lambda k: k.startswith(_REWARD_ISSUES),
    "accuracy": lambda k: "accuracy" in _last(k) and not k.endswith("_samples") and not k.startswith(_REWARD_ISSUES),
    "kl": lambda k: "kl" in _last(k),
    "completion_length": lambda k: "length" in k or k.endswith("_len"),
    "time": lambda k: k.startswith("time/"),
    "lr": lambda k: k == "lr" or k.startswith("lr/") or k.endswith("/lr"),
    "grad_norm": lambda k: _last(k) == "grad_norm",
    "throughput": lambda k: _last(k) == "tokens_per_s",
}
MARKERS_UP_TO = 30  # points; sparser curves get markers so single points stay visible


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
            if not math.isfinite(value):
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
    """Centred mean over ``n`` points (fewer at the ends): unlike a trailing mean it does not lag
    behind a falling loss."""
    half = n // 2
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half): i + n - half]
        out.append(sum(window) / len(window))
    return out


def _draw(ax, name: str, keys: list[str], series, smooth: int) -> None:
    for key in keys:
        steps, values = series[key]
        if key == "reward_std" and "reward" in series and series["reward"][0] == steps:
            mean = series["reward"][1]
            ax.fill_between(steps, [m - v for m, v in zip(mean, values)], [m + v for m, v in zip(mean, values)],
                            alpha=0.15, color="gray", label="reward +- reward_std")
            continue
        marker = "o" if key.startswith("eval/") or len(values) <= MARKERS_UP_TO else None
        if len(values) >= 3 * smooth > 3:
            line, = ax.plot(steps, values, alpha=0.3, lw=0.8)
            ax.plot(steps, _running_mean(values, smooth), color=line.get_color(), lw=1.6,
                    label=f"{key} (mean of {smooth})")
        else:
            ax.plot(steps, values, marker=marker, ms=3.5, lw=1.4, label=key)
    ax.set_title(name.replace("_", " "))
    ax.set_xlabel("step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, framealpha=0.6)


def _draw_others(fig, keys: list[str], series, smooth: int, cols: int = 4) -> None:
    """One small axis per key (counters and diagnostics of very different scales)."""
    rows = (len(keys) + cols - 1) // cols
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        _draw(ax, key, [key], series, smooth)
        ax.set_title(key, fontsize=9)  # the key as logged (reward_none/..., eval/samples)
        ax.set_xlabel("")
        ax.get_legend().remove()
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)


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
    others = panels.pop("other", [])
    written = []
    for name, keys in panels.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        _draw(ax, name, keys, series, smooth)
        fig.tight_layout()
        written.append(out_dir / f"{name}.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    cols, small_cols = 2, 4
    other_rows = (len(others) + small_cols - 1) // small_cols
    if others:
        fig = plt.figure(figsize=(12, 2.4 * other_rows + 0.6), layout="constrained")
        _draw_others(fig, others, series, smooth, small_cols)
        fig.suptitle("other")
        written.append(out_dir / "other.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    rows = (len(panels) + cols - 1) // cols
    fig = plt.figure(figsize=(12, 3.6 * rows + 2.4 * other_rows + 0.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.6 * rows, 2.4 * other_rows + 1e-6]) if others else (fig, None)
    axes = top.subplots(rows, cols, squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels.items()):
        _draw(ax, name, keys, series, smooth)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if bottom is not None:
        _draw_others(bottom, others, series, smooth, small_cols)
    fig.suptitle(str(path.parent))
    written.append(out_dir / "overview.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Plot a run's metrics.jsonl to PNG files.")
    ap.add_argument("run_dir", help="the run's logging.output_dir (or its metrics.jsonl)")
    ap.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    ap.add_argument("--smooth", type=int, default=10, help="centred running-mean window in steps (default 10; 1 = off)")
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

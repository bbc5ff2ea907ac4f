"""The demo's held-out table: accuracy, format rate and mean reward (seed 000's rewards) per stage,
with the noise margin that says whether a difference between two stages is real.

    rows = {"base": score_heldout(texts_base, solutions), "after SFT": ..., "after GRPO": ...}
    print(format_table(rows))

Completions are scored with the rewards GRPO trains on (``accuracy`` + ``format``, weight 1 each),
so "mean reward" is on the same scale as the training curves (0..2).
"""

from __future__ import annotations

import math
from typing import Sequence

from megatron_vrft.rewards.labels import accuracy, format_reward


def score_heldout(completions: Sequence[str], solutions: Sequence[str]) -> dict[str, float]:
    """``{"n", "accuracy", "format", "reward"}`` over held-out completions (one per prompt)."""
    if len(completions) != len(solutions) or not completions:
        raise ValueError(f"need one completion per held-out prompt, got {len(completions)} for {len(solutions)}")
    acc = accuracy(list(completions), solution=list(solutions))
    fmt = format_reward(list(completions))
    n = len(completions)
    return {"n": n, "accuracy": sum(acc) / n, "format": sum(fmt) / n, "reward": (sum(acc) + sum(fmt)) / n}


def accuracy_margin(p_a: float, p_b: float, n: int, z: float = 2.0) -> float:
    """``z`` standard errors of the difference of two accuracies measured on ``n`` prompts each
    (binomial, independent samples: conservative for the same prompts). A difference larger than
    this is beyond noise (z = 2: about 95%)."""
    return z * math.sqrt((p_a * (1 - p_a) + p_b * (1 - p_b)) / n)


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table of the stages in order, then one line per consecutive pair: the accuracy
    change and its 2-SE noise margin."""
    lines = ["| stage | held-out prompts | accuracy | format rate | mean reward |", "|---|---|---|---|---|"]
    for stage, r in rows.items():
        lines.append(f"| {stage} | {r['n']} | {r['accuracy']:.3f} | {r['format']:.3f} | {r['reward']:.3f} |")
    stages = list(rows)
    for a, b in zip(stages, stages[1:]):
        ra, rb = rows[a], rows[b]
        delta = rb["accuracy"] - ra["accuracy"]
        margin = accuracy_margin(ra["accuracy"], rb["accuracy"], min(ra["n"], rb["n"]))
        verdict = "beyond noise" if abs(delta) > margin else "within noise"
        lines.append(f"\n{b} vs {a}: accuracy {delta:+.3f} (2-SE noise margin {margin:.3f}: {verdict})")
    return "\n".join(lines)

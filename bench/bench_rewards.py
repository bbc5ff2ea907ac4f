"""Reward throughput: completions/s per reward, SBERT batched vs one-by-one, TAR judge concurrency.

Run from the repository root:

    PYTHONPATH=. python bench/bench_rewards.py            # full run (a few minutes on 2 CPU cores)
    PYTHONPATH=. python bench/bench_rewards.py --quick    # smaller batches, for a smoke check

Baselines measured in the same run: the seeds' own regex template check (``re.fullmatch`` of
``<think>.*?</think>\\s*<answer>.*?</answer>``) for ``format``, one-completion-at-a-time SBERT
encoding for ``explain_correction``, and concurrency 1 for the TAR judge. TAR runs against the
tests' local fake judge server (tests/rewards/fake_judge.py) with a fixed per-request latency, so
its figure measures the client (concurrency, overhead), not a real judge model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import re
import time
from pathlib import Path

import torch

from megatron_vrft.rewards import get_reward, similarity

REPO = Path(__file__).resolve().parent.parent
SEED_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
WORDS = "the person walks into the kitchen opens fridge takes milk pours glass dog runs yard".split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_batch(n: int, seed: int = 0) -> tuple[list[str], dict]:
    """n realistic completions (~100-word think, answer, correction) and their dataset columns."""
    rng = random.Random(seed)
    completions, cols = [], {k: [] for k in ("solution", "gt_span", "duration", "task_type", "reference_queries", "choices", "answer")}
    for i in range(n):
        refusable = i % 3 == 0
        s = round(rng.uniform(0, 40), 1)
        answer = "No such event happens." if refusable else f"{s} to {s + rng.uniform(1, 10):.1f}"
        correction = _sentence(rng, 8) if refusable else "NIL"
        completions.append(f"<think>{_sentence(rng, 100)}</think>\n<answer>{answer}</answer>\n<correction>{correction}</correction>")
        cols["solution"].append(rng.choice(["normal", "abnormal"]))
        cols["gt_span"].append([10.0, 20.0])
        cols["duration"].append(60.0)
        cols["task_type"].append("refusable" if refusable else "answerable")
        cols["reference_queries"].append([_sentence(rng, 8) for _ in range(3)])
        cols["choices"].append(["a cup", "a phone", "a book"])
        cols["answer"].append("B")
    return completions, cols


def rate(fn, n: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` completions per second of ``fn()`` processing ``n`` completions."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def bench_cpu_rewards(n: int) -> list[tuple[str, float]]:
    completions, cols = make_batch(n)
    rows = []
    for name in ("accuracy", "format", "format_v2", "iou_v2", "refuse_iou", "mc_accuracy"):
        fn = get_reward(name)
        rows.append((name, rate(lambda: fn(completions, **cols), n)))
    rows.append(("seed regex fullmatch (format baseline)", rate(lambda: [SEED_FORMAT.fullmatch(c.strip()) for c in completions], n)))
    return rows


def bench_adversarial(size: int) -> list[tuple[str, float]]:
    """Seconds for one ~``size``-char completion built to make the seed regex backtrack."""
    trap = "<think>" + "</think><answer></answer>" * (size // 25) + "x"
    fmt = get_reward("format")
    out = []
    for label, fn in (("format (ours)", lambda: fmt([trap])), ("seed regex fullmatch", lambda: SEED_FORMAT.fullmatch(trap))):
        t0 = time.perf_counter()
        fn()
        out.append((label, time.perf_counter() - t0))
    return out


def bench_sbert(n: int) -> list[tuple[str, float]]:
    completions, cols = make_batch(n)
    similarity.get_sbert()  # load outside the timed region
    ec = get_reward("explain_correction")
    batched = rate(lambda: ec(completions, **cols), n, repeats=2)
    one_by_one = rate(
        lambda: [ec([c], **{k: [v[i]] for k, v in cols.items()}) for i, c in enumerate(completions)], n, repeats=1
    )
    return [("explain_correction, batched (SBERT)", batched), ("explain_correction, one completion per call", one_by_one)]


def bench_tar(n: int, latency_s: float) -> list[tuple[str, float]]:
    spec = importlib.util.spec_from_file_location("fake_judge", REPO / "tests" / "rewards" / "fake_judge.py")
    fake_judge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake_judge)
    server, base_url, state = fake_judge.start_fake_judge()
    state.delay_s = latency_s
    gt = {"00:12": "The sauce looks thick.", "00:15-00:18": "The chef pours water into the pan."}
    claims = json.dumps({"00:13": "The sauce looks thick.", "00:16": "Someone adds water to the pan."})
    completions = [f"<think>CLAIMS: {claims}\nrun {i}</think><answer>B</answer>" for i in range(n)]
    similarity.get_sbert()
    rows = []
    try:
        for conc in (1, 16):
            tar = get_reward("tar", base_url=base_url, model=f"bench-c{conc}", concurrency=conc, timeout_s=30.0)
            tar(completions[:2], temporal_grounding=[gt] * 2)  # warm the connection pool
            values = []
            r = rate(lambda: values.extend(tar(completions, temporal_grounding=[gt] * n)), n, repeats=1)
            assert values == [1.0] * n, values
            rows.append((f"tar, judge latency {latency_s * 1000:.0f} ms, concurrency {conc}", r))
    finally:
        server.shutdown()
        server.server_close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches (smoke check)")
    args = parser.parse_args()
    n_cpu, n_sbert, n_tar = (512, 64, 16) if args.quick else (8192, 512, 64)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, python {platform.python_version()}")
    print("\n| reward | completions/s |\n|---|---:|")
    for name, r in bench_cpu_rewards(n_cpu) + bench_sbert(n_sbert) + bench_tar(n_tar, 0.02):
        print(f"| {name} | {r:,.0f} |")
    print("\n| ~100 kB backtracking trap | seconds |\n|---|---:|")
    for name, s in bench_adversarial(100_000):
        print(f"| {name} | {s:.4f} |")


if __name__ == "__main__":
    main()

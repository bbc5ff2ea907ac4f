"""Cost of the CPU compatibility layer's schedule patch: one mcore ``forward_backward_no_pipelining``
step (forward + backward) of a tiny GPTModel with ``schedules_token_counter`` as it is now (only
the token-counter allocation redirected) against the former patch (the whole schedule call under
``CudaToCpuMode``, a ``TorchFunctionMode`` every torch call of the forward and backward passes
through).

Run (repository root):  PYTHONPATH=. python bench/bench_cpu_compat.py [--steps 20] [--rounds 5] [--runs 3]

Both variants run the same model, batch and threads (1 torch thread, as in the tests), interleaved
round by round so load drift on a shared machine hits both alike. Each run prints, per shape,
the per-step seconds (best round) of both and their ratio; the summary gives min / median / max
of the ratios over ``--runs`` runs and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from megatron_vrft.testing.tiny_gpt import TinyGPTShape

SHAPES = {
    "tiny (2 layers, hidden 64, seq 64)": (TinyGPTShape(layers=2, hidden=64, heads=4, groups=2, ffn=128, vocab=96), 64),
    "small (4 layers, hidden 256, seq 256)": (
        TinyGPTShape(layers=4, hidden=256, heads=8, groups=2, ffn=704, vocab=2048, mrope_section=(4, 6, 6)), 256),
}


def _step_fn(shape: TinyGPTShape, seq: int, whole_schedule_mode: bool):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_vrft.runtime.cpu_compat import CudaToCpuMode
    from megatron_vrft.testing.tiny_gpt import build_tiny_gpt

    model = build_tiny_gpt(shape)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
    ddp.config.finalize_model_grads_func = finalize_model_grads
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape.vocab, (1, seq), generator=gen)
    pos = torch.arange(seq).view(1, 1, seq).expand(3, 1, seq).contiguous()

    def forward_step(_it, m):
        return m(ids, pos, None, labels=ids), lambda t: (t.mean(), {"loss": t.mean().detach().clone()})

    def step():
        ddp.zero_grad_buffer()
        kw = dict(forward_step_func=forward_step, data_iterator=iter([None]), model=[ddp], num_microbatches=1,
                  seq_length=seq, micro_batch_size=1, forward_only=False)
        if whole_schedule_mode:
            with CudaToCpuMode():
                get_forward_backward_func()(**kw)
        else:
            get_forward_backward_func()(**kw)

    return step


def _race(fns: dict, steps: int, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` seconds per step for each function (interleaved, 3 warm-up steps each)."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t0) / steps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per run (best is kept)")
    ap.add_argument("--runs", type=int, default=3, help="independent runs (fresh models)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from megatron_vrft.runtime import destroy_distributed, init_distributed

    init_distributed(seed=0)
    ratios: dict[str, list[float]] = {k: [] for k in SHAPES}
    try:
        for run in range(a.runs):
            for label, (shape, seq) in SHAPES.items():
                fns = {"narrowed": _step_fn(shape, seq, False), "whole-schedule mode": _step_fn(shape, seq, True)}
                best = _race(fns, a.steps, a.rounds)
                ratio = best["whole-schedule mode"] / best["narrowed"]
                ratios[label].append(ratio)
                print(f"run {run + 1}: {label}: narrowed {best['narrowed'] * 1e3:.2f} ms, whole-schedule mode "
                      f"{best['whole-schedule mode'] * 1e3:.2f} ms per step, mode / narrowed {ratio:.3f}", flush=True)
    finally:
        destroy_distributed()
    print(f"\nload average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; torch {torch.__version__}, 1 thread")
    print("| model | whole-schedule mode / narrowed, min / median / max over runs |")
    print("|---|---|")
    for label, r in ratios.items():
        print(f"| {label} | {min(r):.3f} / {statistics.median(r):.3f} / {max(r):.3f} |")


if __name__ == "__main__":
    main()

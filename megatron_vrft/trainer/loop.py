"""``train(run, step_fn)``: the one training loop (SFT now, GRPO with its own ``step_fn`` later).

``step_fn(run, batch) -> metrics`` does one optimizer step on ``batch`` (``run.train.next_batch()``)
and returns at least ``loss``, ``grad_norm``, ``lr``, ``samples``, ``tokens``, ``samples_skipped``
(the same values on every rank). Everything else here is shared: resume, logging, the NaN policy,
periodic saves and evals, the final save and HF export.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from megatron_vrft.trainer.checkpoint import export_hf, resume_if_any, save_checkpoint
from megatron_vrft.trainer.eval import evaluate

__all__ = ["train", "TrainingStopped"]


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row); a checkpoint was saved first."""


def _due(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def train(run, step_fn: Callable) -> None:
    """resume -> [batch -> step -> log -> save / eval] until total_steps or the data ends -> save, export."""
    cfg = run.cfg
    saving = cfg.checkpoint.save_dir is not None
    resume_if_any(run)
    saved_at = evaluated_at = run.step
    while run.step < run.total_steps:
        t0 = time.perf_counter()
        with run.timers("data"):
            batch = run.train.next_batch()
        if batch is None:
            break  # some DP rank ran out of samples: every rank stops here together
        metrics = step_fn(run, batch)
        run.step += 1
        run.consumed_samples += metrics["samples"]
        took = time.perf_counter() - t0
        run.metrics.log(run.step, {**metrics, **run.timers.pop(), "tokens_per_s": metrics["tokens"] / took,
                                   "time/step": took})
        if run.guard.exhausted:
            if saving:
                save_checkpoint(run)
            raise TrainingStopped(f"step {run.step}: {run.guard.message}")
        if saving and _due(run.step, cfg.checkpoint.save_interval):
            with run.timers("save"):
                save_checkpoint(run)
            saved_at = run.step
        if run.eval is not None and _due(run.step, run.eval_interval):
            with run.timers("eval"):
                run.metrics.log(run.step, evaluate(run))
            evaluated_at = run.step
    if saving and saved_at != run.step:
        save_checkpoint(run)
    if run.eval is not None and evaluated_at != run.step:
        run.metrics.log(run.step, evaluate(run))
    if cfg.checkpoint.export_hf:
        export_hf(run, Path(cfg.logging.output_dir) / "hf")
    run.metrics.close()

"""Timers, the per-step metrics record and where it goes (metrics.jsonl, TensorBoard, W&B, progress bar).

    timers = Timers()
    with timers("forward_backward"):
        ...
    logger = MetricsLogger(cfg.logging, rank=dist.rank, total_steps=n)
    logger.log(step, {"loss": 1.2, "lr": 1e-5, **timers.pop()})
    logger.close()

Only global rank 0 writes; every other rank's logger is a no-op, so callers need no rank checks
(they must bring the values to rank 0 themselves: the loss lives on the last pipeline stage).
``<output_dir>/metrics.jsonl`` holds one JSON object per ``log`` call (one per optimizer step, plus
eval records); non-finite floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` so the
file stays strict JSON. TensorBoard events go to ``<output_dir>/tb`` and W&B (optional, imported
only when enabled) honours ``WANDB_MODE=offline``; both receive every ``log_interval``-th step and
every eval record.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch

__all__ = ["Timers", "MetricsLogger", "NonFiniteGuard", "METRICS_FILE", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


class Timers:
    """Named phase timers; ``pop()`` returns ``{"time/<name>": seconds}`` summed since the last pop.

    On CUDA the device is synchronised at both ends of a phase so the time is the phase's, not the
    time to launch its kernels.
    """

    def __init__(self) -> None:
        self._totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        sync = torch.cuda.is_available() and torch.cuda.is_initialized()
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize()
            self._totals[name] += time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self._totals.items()}
        self._totals.clear()
        return out


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``<output_dir>/metrics.jsonl`` (for tests and tools); strings "nan"/"inf" stay strings."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Rank 0's sinks for the metrics of a run (see the module doc). ``rank != 0`` -> all no-ops.

    ``logging`` is ``cfg.logging`` (a ``LoggingConfig``); ``run_config`` (optional) is stored as the
    W&B run config. ``total_steps`` sizes the progress bar (its ETA comes from tqdm).
    """

    def __init__(self, logging: Any, *, rank: int = 0, total_steps: Optional[int] = None,
                 run_config: Any = None) -> None:
        self.enabled = rank == 0
        self.cfg = logging
        self.dir = Path(logging.output_dir)
        self._total_steps = total_steps
        self._run_config = run_config
        self._bar = None
        self._tb = None
        self._wandb = None
        self._file = None
        self._opened = False
        if self.enabled and logging.wandb:
            try:  # fail at construction, not at the first step
                import wandb  # noqa: F401
            except ImportError:
                raise RuntimeError("logging.wandb is true but wandb is not installed "
                                   "(pip install megatron_vrft[wandb])") from None

    def _open(self) -> None:
        """Creates the sinks on first use, so a run that fails before its first record writes nothing."""
        if self._opened:
            return
        self._opened = True
        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        if cfg.wandb:
            import wandb

            config = asdict(self._run_config) if is_dataclass(self._run_config) else self._run_config
            # WANDB_MODE (e.g. offline) is read by wandb.init itself; dir keeps its files with the run's.
            self._wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, dir=str(self.dir),
                                     config=config)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tb"))
        if cfg.progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._total_steps, desc="train", unit="step", dynamic_ncols=True)

    def rewind(self, step: int) -> None:
        """Drops records with ``step > step`` from metrics.jsonl (a resumed run redoes those steps) and
        moves the progress bar there. Call once after resuming, before the first ``log``."""
        if not self.enabled:
            return
        self._open()
        path = self.dir / METRICS_FILE
        if path.is_file():
            kept = [r for r in read_metrics(self.dir) if r.get("step", 0) <= step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
            tmp.replace(path)
        if self._bar is not None:
            self._bar.n = step
            self._bar.last_print_n = step
            self._bar.refresh()

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One record for ``step``: a jsonl line always; TB/W&B every ``log_interval`` steps and for
        any record with ``eval/`` keys; the progress bar moves to ``step``."""
        if not self.enabled:
            return
        self._open()
        record = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        if self._file is None:
            self._file = open(self.dir / METRICS_FILE, "a", encoding="utf-8")
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        is_eval = any(k.startswith("eval/") for k in record)
        interval = max(1, int(self.cfg.log_interval))
        if is_eval or step % interval == 0:
            if self._tb is not None:
                for k, v in numeric.items():
                    self._tb.add_scalar(k, v, global_step=step)
                self._tb.flush()
            if self._wandb is not None:
                self._wandb.log(numeric, step=step)
        if self._bar is not None:
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
            shown = {k: record[k] for k in ("loss", "lr", "tokens_per_s", "eval/loss", "eval/accuracy")
                     if k in record}
            if shown:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in shown.items()},
                                      refresh=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class NonFiniteGuard:
    """Counts consecutive optimizer steps whose loss or grad norm is NaN/inf.

    ``observe(loss, grad_norm)`` -> True when the step is bad (the caller skips the update and logs
    ``nonfinite=1``); ``exhausted`` is True once ``max_consecutive`` bad steps came in a row (the
    caller saves a checkpoint and stops with ``message``). A good step resets the count.
    """

    def __init__(self, max_consecutive: int = 3) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def observe(self, loss: Any, grad_norm: Any = None) -> bool:
        bad = any(v is not None and not math.isfinite(_as_float(v)) for v in (loss, grad_norm))
        if bad:
            self.consecutive += 1
            self.total += 1
        else:
            self.consecutive = 0
        return bad

    @property
    def exhausted(self) -> bool:
        return self.consecutive >= self.max_consecutive

    @property
    def message(self) -> str:
        return (f"{self.consecutive} optimizer steps in a row had a non-finite loss or gradient norm "
                f"(updates skipped); stopping after saving a checkpoint")


def _as_float(v: Any) -> float:
    return v.detach().float().item() if isinstance(v, torch.Tensor) else float(v)

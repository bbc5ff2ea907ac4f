"""Scoring a batch with the configured rewards: the weighted sum, per-reward values, failures.

    job = start_rewards(cfg.grpo.rewards, completions, columns)   # background rewards start now
    ... old / reference logprob passes ...
    scores = job.result()                                          # CombinedRewards

``start_rewards`` runs the quick rewards at once in the caller's thread and hands the ones marked
``reward_background`` (the LLM-judge ``tar``) to a worker thread, so their network waits overlap
the trainer's next phase; ``result()`` joins them. ``combine_rewards`` is both at once.

Failure rules (one bad sample must not stop a GRPO step):
- a reward that raises on the batch is re-run sample by sample; each sample that raises again gets
  None (left out of that reward's mean, nothing added to the total), is counted in
  ``CombinedRewards.errors`` and logged once per reward and batch;
- config errors (``RewardConfigError``) and malformed outputs (``RewardOutputError``: wrong length,
  NaN, a non-number) still raise: they are bugs that would repeat on every step;
- an empty or truncated completion is an ordinary input: each reward gives its normal value
  (0 for accuracy and the format rewards).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from .registry import (
    RewardConfigError,
    RewardOutputError,
    RewardSpec,
    check_output,
    check_specs,
    get_reward,
    is_background,
)

__all__ = ["CombinedRewards", "RewardJob", "start_rewards", "combine_rewards"]

logger = logging.getLogger(__name__)

_EXECUTOR: Optional[concurrent.futures.ThreadPoolExecutor] = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="reward")
        return _EXECUTOR


@dataclass
class CombinedRewards:
    """The scores of a batch.

    total: per completion, sum over rewards of weight * value, None values skipped (0.0 when every
        reward is None for that completion, as TRL's ``nansum`` does).
    per_reward: name -> the raw (unweighted) values, None kept, for logging each reward.
    errors: name -> completions for which the reward raised (their value is None).
    seconds: name -> wall time of the reward on this batch.
    """

    total: list[float]
    per_reward: dict[str, list[float | None]]
    errors: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def means(self) -> dict[str, float | None]:
        """Mean of each reward over the completions where it applies (None when it applies nowhere)."""
        out: dict[str, float | None] = {}
        for name, values in self.per_reward.items():
            vals = [v for v in values if v is not None]
            out[name] = sum(vals) / len(vals) if vals else None
        return out

    def none_counts(self) -> dict[str, int]:
        """How many completions each reward skipped (not applicable, failed judge calls, errors)."""
        return {name: sum(v is None for v in values) for name, values in self.per_reward.items()}


def _row(columns: Mapping[str, Any], i: int, n: int) -> dict[str, Any]:
    """Columns of completion i alone (a column that is not a list aligned with the batch stays as is)."""
    return {k: [v[i]] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in columns.items()}


def _score(spec: RewardSpec, completions: list[str], columns: Mapping[str, Any]) -> tuple[list, int, float]:
    """(values, completions that raised, seconds) of one reward on the batch."""
    fn = get_reward(spec.name, **dict(spec.options or {}))
    n = len(completions)
    start = time.perf_counter()
    try:
        values = check_output(spec.name, fn(list(completions), **columns), n)
        return values, 0, time.perf_counter() - start
    except (RewardConfigError, RewardOutputError):
        raise
    except Exception as exc:  # noqa: BLE001 - isolated per sample below
        batch_error = exc
    values, failed, first = [], 0, None
    for i, completion in enumerate(completions):
        try:
            values += check_output(spec.name, fn([completion], **_row(columns, i, n)), 1)
        except (RewardConfigError, RewardOutputError):
            raise
        except Exception as exc:  # noqa: BLE001 - one sample's failure gives None for it
            values.append(None)
            failed += 1
            first = first or exc
    logger.warning(
        "reward %r raised for %d of %d completions; they get None (first error: %s: %s)",
        spec.name, failed, n, type(first or batch_error).__name__, first or batch_error,
    )
    return values, failed, time.perf_counter() - start


class RewardJob:
    """Rewards of one batch, some possibly still running; ``result()`` waits and combines them."""

    def __init__(self, specs: list[RewardSpec], n: int, done: dict, pending: dict):
        self._specs, self._n, self._done, self._pending = specs, n, done, pending
        self._result: Optional[CombinedRewards] = None
        self.wait_seconds = 0.0  # how long result() blocked on background rewards

    def done(self) -> bool:
        return all(f.done() for f in self._pending.values())

    def result(self, timeout: Optional[float] = None) -> CombinedRewards:
        if self._result is None:
            start = time.perf_counter()
            scored = dict(self._done)
            for name, future in self._pending.items():
                scored[name] = future.result(timeout=timeout)
            self.wait_seconds = time.perf_counter() - start
            total = [0.0] * self._n
            for spec in self._specs:
                for i, v in enumerate(scored[spec.name][0]):
                    if v is not None:
                        total[i] += spec.weight * v
            per_reward = {s.name: scored[s.name][0] for s in self._specs}
            nowhere = sum(all(per_reward[s.name][i] is None for s in self._specs) for i in range(self._n))
            if self._specs and nowhere:
                logger.warning("%d of %d completions have no applicable reward; their total is 0.0", nowhere, self._n)
            self._result = CombinedRewards(
                total=total,
                per_reward=per_reward,
                errors={s.name: scored[s.name][1] for s in self._specs},
                seconds={s.name: scored[s.name][2] for s in self._specs},
            )
        return self._result


def start_rewards(
    specs: Sequence[RewardSpec | tuple | Mapping[str, Any]],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]],
) -> RewardJob:
    """Score quick rewards now and start the background ones (module docstring).

    specs: ``RewardSpec``s, ``(name, weight, options)`` tuples or ``{name, weight, options}`` maps;
        each name once (per-reward logs are keyed by name); checked like the config loader does.
    completions: N generated texts (empty or truncated ones included).
    columns: dataset columns, each a list of length N.
    """
    parsed = check_specs(specs)
    completions = list(completions)
    done, pending = {}, {}
    for spec in parsed:
        if is_background(spec.name):
            pending[spec.name] = _executor().submit(_score, spec, completions, columns)
    try:
        for spec in parsed:
            if spec.name not in pending:
                done[spec.name] = _score(spec, completions, columns)
    except BaseException:
        for future in pending.values():
            future.cancel()
        raise
    return RewardJob(parsed, len(completions), done, pending)


def combine_rewards(
    specs: Sequence[RewardSpec | tuple | Mapping[str, Any]],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]],
) -> CombinedRewards:
    """Evaluate each configured reward on the batch and sum them with their weights (blocking)."""
    return start_rewards(specs, completions, columns).result()

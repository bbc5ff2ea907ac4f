"""Reward registry, plugin resolution and the weighted combination a trainer calls.

A reward is a batch function in TRL's style::

    fn(completions: list[str], *, <options>=defaults, **columns) -> list[float | None]

Dataset columns arrive in ``**columns`` as lists aligned with ``completions`` (``solution``,
``gt_span``, ``duration``, ``task_type``, ...); a reward reads what it needs with ``column()`` and
ignores the rest. ``None`` means "not applicable to this completion": it is left out of that reward's
mean and contributes nothing to the completion's total (TRL's ``nansum`` semantics).

Options (valid label set, thresholds, judge endpoint, ...) are keyword parameters with defaults;
``get_reward(name, **options)`` binds them so a config entry ``{name, weight, options}`` maps to
one callable. Rewards are found by registered name or, for plugins, by ``"pkg.module:function"``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list]

_REGISTRY: dict[str, RewardFn] = {}


class RewardError(ValueError):
    """Base class of every user-facing reward error."""


class DuplicateRewardError(RewardError):
    """A second reward was registered under an existing name."""


class UnknownRewardError(RewardError):
    """A reward name is neither registered nor an importable ``pkg.module:function`` path."""


class RewardConfigError(RewardError):
    """Bad options for a reward (unknown option name, missing endpoint, bad weight)."""


class RewardInputError(RewardError):
    """A dataset column is missing, misaligned, or holds a value the reward cannot use."""


class RewardOutputError(RewardError):
    """A reward returned something other than one finite float or None per completion."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator that registers ``fn`` under ``name``; registering a name twice raises."""
    if not name or ":" in name:
        raise RewardConfigError(f"invalid reward name {name!r}: non-empty, without ':'")

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY:
            existing = _REGISTRY[name]
            raise DuplicateRewardError(
                f"reward {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        _REGISTRY[name] = fn
        return fn

    return decorator


def registered_rewards() -> list[str]:
    """Sorted names of every registered reward."""
    return sorted(_REGISTRY)


def _resolve(name: str) -> RewardFn:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise UnknownRewardError(
            f"unknown reward {name!r}; registered rewards: {', '.join(registered_rewards())}; "
            "a plugin is named 'pkg.module:function'"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownRewardError(f"reward plugin {name!r}: cannot import {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UnknownRewardError(f"reward plugin {name!r}: {module_name} has no callable {attr!r}")
    return fn


def _check_options(name: str, fn: RewardFn, options: Mapping[str, Any]) -> None:
    """Reject option names the function does not declare, so a typo fails at config time."""
    params = inspect.signature(fn).parameters
    # Built-ins take options as keyword-only parameters and dataset columns through **columns;
    # plugins may also declare options positionally-or-by-keyword.
    accepted = [
        p.name
        for p in params.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "completions"
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise RewardConfigError(
            f"reward {name!r} has no option(s) {unknown}; it accepts: {', '.join(accepted)}"
        )


def get_reward(name: str, **options: Any) -> RewardFn:
    """The reward called ``name`` (registered, or ``pkg.module:function``), options bound."""
    fn = _resolve(name)
    if not options:
        return fn
    _check_options(name, fn, options)
    bound = functools.partial(fn, **options)
    functools.update_wrapper(bound, fn)
    return bound


def column(columns: Mapping[str, Any], key: str, n: int, reward: str, required: bool = True) -> list | None:
    """Column ``key`` as a list of length ``n``; a clear error when absent or misaligned.

    Returns None when the column is absent and not required.
    """
    if key not in columns or columns[key] is None:
        if not required:
            return None
        raise RewardInputError(
            f"reward {reward!r} needs column {key!r}; columns given: {sorted(columns) or 'none'}"
        )
    values = columns[key]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RewardInputError(
            f"reward {reward!r}: column {key!r} must be a list aligned with completions, "
            f"got {type(values).__name__}"
        )
    if len(values) != n:
        raise RewardInputError(
            f"reward {reward!r}: column {key!r} has {len(values)} values for {n} completions"
        )
    return list(values)


def check_output(name: str, values: Any, n: int) -> list[float | None]:
    """Validate a reward's return value: one finite float (or None) per completion."""
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise RewardOutputError(f"reward {name!r} returned {type(values).__name__}, expected a list")
    if len(values) != n:
        raise RewardOutputError(f"reward {name!r} returned {len(values)} values for {n} completions")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        # numpy / torch scalars expose __float__ and are accepted; a bool is almost always a bug
        if isinstance(v, bool) or not hasattr(v, "__float__"):
            raise RewardOutputError(f"reward {name!r} value {i} is {type(v).__name__}, not a number")
        f = float(v)
        if not math.isfinite(f):
            raise RewardOutputError(f"reward {name!r} value {i} is {f}; return None for 'not applicable'")
        out.append(f)
    return out


@dataclass(frozen=True)
class RewardSpec:
    """One configured reward: registered name or plugin path, weight, and bound options."""

    name: str
    weight: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.weight, (int, float)) or isinstance(self.weight, bool) or not math.isfinite(self.weight):
            raise RewardConfigError(f"reward {self.name!r}: weight must be a finite number, got {self.weight!r}")


@dataclass
class CombinedRewards:
    """Result of ``combine_rewards``.

    total: per completion, sum over rewards of weight * value, None values skipped (0.0 when every
        reward is None for that completion, as TRL's ``nansum`` does).
    per_reward: name -> the raw (unweighted) values, None kept, for logging each reward.
    """

    total: list[float]
    per_reward: dict[str, list[float | None]]

    def means(self) -> dict[str, float | None]:
        """Mean of each reward over the completions where it applies (None when it applies nowhere)."""
        out: dict[str, float | None] = {}
        for name, values in self.per_reward.items():
            vals = [v for v in values if v is not None]
            out[name] = sum(vals) / len(vals) if vals else None
        return out

    def none_counts(self) -> dict[str, int]:
        """How many completions each reward skipped (e.g. judge calls that finally failed)."""
        return {name: sum(v is None for v in values) for name, values in self.per_reward.items()}


def _as_spec(spec: RewardSpec | tuple | Mapping[str, Any]) -> RewardSpec:
    if isinstance(spec, RewardSpec):
        return spec
    if isinstance(spec, Mapping):
        return RewardSpec(spec["name"], spec.get("weight", 1.0), dict(spec.get("options") or {}))
    if isinstance(spec, tuple) and 1 <= len(spec) <= 3:
        return RewardSpec(*spec)
    raise RewardConfigError(f"reward spec must be RewardSpec, (name, weight, options) or a mapping, got {spec!r}")


def combine_rewards(
    specs: Sequence[RewardSpec | tuple | Mapping[str, Any]],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]],
) -> CombinedRewards:
    """Evaluate each configured reward on the batch and sum them with their weights.

    specs: ``RewardSpec``s, ``(name, weight, options)`` tuples or ``{name, weight, options}`` maps;
        each name appears once (per-reward logs are keyed by name).
    completions: N generated texts.  columns: dataset columns, each a list of length N.
    """
    parsed = [_as_spec(s) for s in specs]
    names = [s.name for s in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RewardConfigError(f"reward(s) {dupes} configured twice; give each reward once")
    n = len(completions)
    total = [0.0] * n
    per_reward: dict[str, list[float | None]] = {}
    for spec in parsed:
        fn = get_reward(spec.name, **spec.options)
        values = check_output(spec.name, fn(list(completions), **columns), n)
        per_reward[spec.name] = values
        for i, v in enumerate(values):
            if v is not None:
                total[i] += spec.weight * v
    skipped_everywhere = sum(all(per_reward[s.name][i] is None for s in parsed) for i in range(n))
    if parsed and skipped_everywhere:
        logger.warning("%d of %d completions have no applicable reward; their total is 0.0", skipped_everywhere, n)
    return CombinedRewards(total=total, per_reward=per_reward)

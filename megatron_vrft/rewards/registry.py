"""Reward registry, plugin resolution and the weighted combination a trainer calls.

A reward is a batch function in TRL's style::

    fn(completions: list[str], *, <options>=defaults, **columns) -> list[float | None]

Dataset columns arrive in ``**columns`` as lists aligned with ``completions`` (``solution``,
``gt_span``, ``duration``, ``task_type``, ...); a reward reads what it needs with ``column()`` and
ignores the rest. ``None`` means "not applicable to this completion": it is left out of that reward's
mean and contributes nothing to the completion's total (TRL's ``nansum`` semantics).

Options (valid label set, thresholds, judge endpoint, ...) are keyword parameters with defaults;
``get_reward(name, **options)`` binds them so a config entry (``config.RewardSpec``: name, weight,
options) maps to one callable. Rewards are found by registered name or, for plugins, by
``"pkg.module:function"``. ``spec_problems`` checks a list of specs without running any reward (the
config loader calls it): the name resolves, the weight is finite, the option names exist, and the
option values pass the reward's ``check_options`` hook when it has one.

Two optional attributes of a reward function (set by ``register_reward``; a plugin may set them):
``reward_check_options(**options)`` raises ``RewardConfigError`` for bad option values, and
``reward_background = True`` marks a slow reward (a network judge) that ``combine.start_rewards``
runs in a background thread while the trainer computes logprobs.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
from typing import Any, Callable, Mapping, Optional, Sequence

from megatron_vrft.config import RewardSpec

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


def register_reward(
    name: str, *, check_options: Optional[Callable[..., None]] = None, background: bool = False
) -> Callable[[RewardFn], RewardFn]:
    """Decorator that registers ``fn`` under ``name``; registering a name twice raises.

    check_options: called with the configured options at config load; raises RewardConfigError.
    background: a slow reward (network judge) that may run while the trainer does other work.
    """
    if not name or ":" in name:
        raise RewardConfigError(f"invalid reward name {name!r}: non-empty, without ':'")

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY:
            existing = _REGISTRY[name]
            raise DuplicateRewardError(
                f"reward {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        if check_options is not None:
            fn.reward_check_options = check_options
        fn.reward_background = background
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


def is_background(name: str) -> bool:
    """Whether the reward ``name`` asked to run in the background (``reward_background``)."""
    return bool(getattr(_resolve(name), "reward_background", False))


def as_spec(spec: RewardSpec | tuple | Mapping[str, Any]) -> RewardSpec:
    """A ``RewardSpec`` from itself, ``(name[, weight[, options]])`` or ``{name, weight, options}``."""
    if isinstance(spec, RewardSpec):
        return spec
    if isinstance(spec, Mapping):
        return RewardSpec(spec["name"], spec.get("weight", 1.0), dict(spec.get("options") or {}))
    if isinstance(spec, tuple) and 1 <= len(spec) <= 3:
        name, weight, options = spec + (1.0, {})[len(spec) - 1:]
        return RewardSpec(name, weight, dict(options))
    raise RewardConfigError(f"reward spec must be RewardSpec, (name, weight, options) or a mapping, got {spec!r}")


def spec_problems(specs: Sequence[RewardSpec]) -> list[tuple[int, str, str]]:
    """``(index, field, message)`` for each problem of the configured rewards, none run.

    field is ``name`` (unknown name or plugin path, given twice), ``weight`` (not a finite
    number) or ``options`` (unknown option name, bad value per the reward's check hook).
    """
    problems: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.name in seen:
            problems.append((i, "name", f"reward {spec.name!r} is configured twice (first at index {seen[spec.name]})"))
        seen.setdefault(spec.name, i)
        w = spec.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            problems.append((i, "weight", f"must be a finite number, got {w!r}"))
        try:
            fn = _resolve(spec.name)
        except RewardError as exc:
            problems.append((i, "name", str(exc)))
            continue
        options = dict(spec.options or {})
        try:
            _check_options(spec.name, fn, options)
            check = getattr(fn, "reward_check_options", None)
            if check is not None:
                check(**options)
        except RewardError as exc:
            problems.append((i, "options", str(exc)))
    return problems


def check_specs(specs: Sequence[RewardSpec | tuple | Mapping[str, Any]]) -> list[RewardSpec]:
    """``specs`` as RewardSpecs; the first problem of ``spec_problems`` raises RewardConfigError."""
    parsed = [as_spec(s) for s in specs]
    problems = spec_problems(parsed)
    if problems:
        i, key, msg = problems[0]
        raise RewardConfigError(f"rewards[{i}].{key}: {msg}")
    return parsed

"""Label and template rewards: ``accuracy``, ``format`` (seed 000, RB-FT), ``format_v2`` (seeds
001/004, RA-RFT) and ``think_answer_format`` (seed 003, Video-R2).

accuracy: the label inside ``<answer>…</answer>`` of the completion equals the reference label,
    case-insensitively, and lies in the valid label set (default ``{normal, abnormal}``): 1.0, else 0.0.
format: the whole response is ``<think>non-empty</think> <answer>label</answer>`` with a valid label.
format_v2: the whole response is ``<think>…</think> <answer>…</answer> <correction>…</correction>``.
think_answer_format: the whole response is ``<think>…</think> <answer>…</answer>``, any answer.
"""

from __future__ import annotations

from typing import Iterable

from .registry import RewardConfigError, RewardInputError, column, register_reward
from .text import last_block, match_template

DEFAULT_LABELS = ("normal", "abnormal")


def label_set(labels: Iterable[str], reward: str) -> frozenset[str]:
    """Normalised (stripped, lower-case) valid labels; a clear error for an empty or non-str set."""
    if isinstance(labels, str):
        raise RewardConfigError(f"reward {reward!r}: labels must be a list of strings, got the string {labels!r}")
    out = frozenset(str(label).strip().lower() for label in labels)
    if not out or "" in out:
        raise RewardConfigError(f"reward {reward!r}: labels must be non-empty strings, got {list(labels)!r}")
    return out


def reference_label(solution: object, valid: frozenset[str], index: int, reward: str) -> str | None:
    """The reference label of one row: the ``<answer>`` content if tagged, else the whole text.

    None when the row has no solution (the reward does not apply); an error when the solution is
    not a valid label, because that is a dataset/config mistake that would silently zero a reward.
    """
    if solution is None:
        return None
    text = str(solution)
    block = last_block(text, "answer")
    label = (block if block is not None else text).strip().lower()
    if label not in valid:
        raise RewardInputError(
            f"reward {reward!r}: solution of row {index} ({text[:80]!r}) is not one of the valid "
            f"labels {sorted(valid)}; set the reward's `labels` option"
        )
    return label


def _labels_check(reward: str):
    def check(*, labels: Iterable[str] = DEFAULT_LABELS) -> None:
        label_set(labels, reward)

    return check


@register_reward("accuracy", check_options=_labels_check("accuracy"))
def accuracy(completions: list[str], *, labels: Iterable[str] = DEFAULT_LABELS, **columns) -> list[float | None]:
    """1.0 when the completion's last ``<answer>`` label equals the reference label, else 0.0.

    columns: ``solution`` (e.g. ``normal`` or ``<answer>abnormal</answer>``; None = not applicable).
    """
    valid = label_set(labels, "accuracy")
    solutions = column(columns, "solution", len(completions), "accuracy")
    rewards: list[float | None] = []
    for i, (completion, solution) in enumerate(zip(completions, solutions)):
        ref = reference_label(solution, valid, i, "accuracy")
        if ref is None:
            rewards.append(None)
            continue
        block = last_block(completion, "answer")
        predicted = block.strip().lower() if block is not None else None
        rewards.append(1.0 if predicted == ref else 0.0)
    return rewards


@register_reward("format", check_options=_labels_check("format"))
def format_reward(completions: list[str], *, labels: Iterable[str] = DEFAULT_LABELS, **columns) -> list[float]:
    """1.0 when the response is exactly ``<think>non-empty</think> <answer>label</answer>``."""
    valid = label_set(labels, "format")
    rewards = []
    for completion in completions:
        parts = match_template(completion, ("think", "answer"))
        ok = parts is not None and parts[0].strip() != "" and parts[1].strip().lower() in valid
        rewards.append(1.0 if ok else 0.0)
    return rewards


@register_reward("format_v2")
def format_v2(completions: list[str], **columns) -> list[float]:
    """1.0 when the response is exactly ``<think>…</think> <answer>…</answer> <correction>…</correction>``.

    Contents may be empty, as in seed 001's ``.*?`` template.
    """
    tags = ("think", "answer", "correction")
    return [1.0 if match_template(c, tags) is not None else 0.0 for c in completions]


@register_reward("think_answer_format")
def think_answer_format(completions: list[str], **columns) -> list[float]:
    """1.0 when the response is exactly ``<think>…</think> <answer>…</answer>`` (contents may be empty
    and the answer is free text, as in Video-R2's ``<think>.*?</think>\\s*<answer>.*?</answer>``)."""
    return [1.0 if match_template(c, ("think", "answer")) is not None else 0.0 for c in completions]

"""Temporal-grounding rewards: timestamp parsing, ``iou_v2`` (Time-R1) and ``refuse_iou`` (seed 001).

iou_v2 = IoU(pred, gt) * (1 - |s_pred - s_gt| / dur) * (1 - |e_pred - e_gt| / dur)

refuse_iou (seed 001 logic table)::

    task_type    span in <answer>   reward
    answerable   valid span         iou_v2
    answerable   none / invalid     0.0
    refusable    any span           0.0
    refusable    none               1.0   (correct refusal)

Spans are read from the last ``<answer>`` block, last span in it (Time-R1's parser). Accepted
forms: ``12.5 to 17.3``, ``12.5 and 17.3``, ``12.5 - 17.3``, ``12.5-17.3 seconds``, ``[12.5, 17.3]``,
``12.5s to 17.3s``, integers. A negative or non-finite value, or start > end, is a parse failure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .registry import RewardInputError, column, register_reward
from .text import last_block

# Linear time: the look-behind forbids starting inside a number or word, so each digit run is the
# start of at most one attempt; no two adjacent quantifiers can split the same run of characters
# (the unit's trailing \s* sits inside the optional group, so a long run of spaces is scanned once).
_NUM = r"(-?)(\d+(?:\.\d+)?|\.\d+|nan|inf)"
_SPAN_RE = re.compile(
    r"(?<![\w.])" + _NUM + r"\s*(?:(?:seconds?|secs?|s)\s*)?(?:to|and|-|–|—|,)\s*" + _NUM,
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SpanParse:
    """What the answer says about time: ``found`` a span-shaped text, and the span if it is valid."""

    found: bool
    span: tuple[float, float] | None


def parse_span(text: str) -> SpanParse:
    """The last ``start <sep> end`` in ``text``; ``span`` is None when it is malformed.

    A span is malformed when a value is negative, NaN or infinite, or start > end.
    """
    last = None
    for last in _SPAN_RE.finditer(text):
        pass
    if last is None:
        return SpanParse(found=False, span=None)
    neg_start, start_s, neg_end, end_s = last.groups()
    start, end = float(start_s), float(end_s)
    if neg_start or neg_end or not (math.isfinite(start) and math.isfinite(end)) or start > end:
        return SpanParse(found=True, span=None)
    return SpanParse(found=True, span=(start, end))


def answer_span(completion: str) -> SpanParse | None:
    """Span parse of the last ``<answer>`` block; None when the completion has no answer block."""
    answer = last_block(completion, "answer")
    return None if answer is None else parse_span(answer)


def iou_v2_score(pred: tuple[float, float], gt: tuple[float, float], duration: float) -> float:
    """Time-R1's iou_v2 for one prediction (seconds); 0.0 when the union is empty.

    The GT span is clamped to [0, duration] (some datasets' ends exceed the file length), and each
    accuracy factor is clamped at 0: unclamped, a prediction reaching more than one video length
    past the GT would make one factor negative and flip the reward's sign.
    """
    gs, ge = max(gt[0], 0.0), min(gt[1], duration)
    ps, pe = pred
    union = max(pe, ge) - min(ps, gs)
    if union <= 0:
        return 0.0
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    start_acc = max(0.0, 1.0 - abs(ps - gs) / duration)
    end_acc = max(0.0, 1.0 - abs(pe - ge) / duration)
    return inter / union * start_acc * end_acc


def _gt_span(value: object, index: int, reward: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        start, end = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise RewardInputError(f"reward {reward!r}: gt_span of row {index} must be [start, end] seconds, got {value!r}") from exc
    if not (math.isfinite(start) and math.isfinite(end)) or start > end:
        raise RewardInputError(f"reward {reward!r}: gt_span of row {index} is not a valid span: {value!r}")
    return start, end


def _duration(value: object, index: int, reward: str) -> float:
    try:
        duration = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        duration = math.nan
    if not (math.isfinite(duration) and duration > 0):
        # RA-RFT silently scores 0 here; a missing duration is a data problem worth stopping for
        raise RewardInputError(
            f"reward {reward!r}: row {index} needs a positive duration (seconds), got {value!r}; "
            "probe it from the video in the dataset adapter"
        )
    return duration


def _iou_for_row(completion: str, gt: tuple[float, float], duration: float) -> float:
    parsed = answer_span(completion)
    if parsed is None or parsed.span is None:
        return 0.0
    return iou_v2_score(parsed.span, gt, duration)


@register_reward("iou_v2")
def iou_v2(completions: list[str], **columns) -> list[float | None]:
    """Time-R1 iou_v2 of the answer's span against ``gt_span`` ([start, end] s), with ``duration`` (s).

    None for rows whose gt_span is None; 0.0 for a missing or malformed span.
    """
    n = len(completions)
    spans = column(columns, "gt_span", n, "iou_v2")
    durations = column(columns, "duration", n, "iou_v2")
    rewards: list[float | None] = []
    for i, (completion, span, dur) in enumerate(zip(completions, spans, durations)):
        gt = _gt_span(span, i, "iou_v2")
        rewards.append(None if gt is None else _iou_for_row(completion, gt, _duration(dur, i, "iou_v2")))
    return rewards


def task_kind(value: object, index: int, reward: str) -> str | None:
    """``answerable`` / ``refusable`` (None when the row has no task type: not applicable)."""
    if value is None:
        return None
    kind = str(value).strip().lower()
    if kind not in ("answerable", "refusable"):
        raise RewardInputError(
            f"reward {reward!r}: task_type of row {index} is {value!r}; expected 'answerable' or 'refusable'"
        )
    return kind


@register_reward("refuse_iou")
def refuse_iou(completions: list[str], **columns) -> list[float | None]:
    """Seed 001's task-aware IoU (see the module docstring's table).

    columns: ``task_type``; for answerable rows also ``gt_span`` and ``duration``.
    A completion without an ``<answer>`` block scores 0.0 for both task types (RA-RFT's code).
    """
    n = len(completions)
    kinds = column(columns, "task_type", n, "refuse_iou")
    spans = column(columns, "gt_span", n, "refuse_iou", required=False) or [None] * n
    durations = column(columns, "duration", n, "refuse_iou", required=False) or [None] * n
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        kind = task_kind(kinds[i], i, "refuse_iou")
        if kind is None:
            rewards.append(None)
        elif kind == "refusable":
            parsed = answer_span(completion)
            rewards.append(1.0 if parsed is not None and not parsed.found else 0.0)
        else:
            gt = _gt_span(spans[i], i, "refuse_iou")
            if gt is None:
                raise RewardInputError(f"reward 'refuse_iou': answerable row {i} has no gt_span")
            rewards.append(_iou_for_row(completion, gt, _duration(durations[i], i, "refuse_iou")))
    return rewards

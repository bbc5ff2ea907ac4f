"""Evaluation metrics as pure functions: per-sample scores (with the parsed answer) and aggregates.

Parsing is the reward library's (megatron_vrft/rewards), so evaluation reads answers exactly as the
rewards did in training:

    binary       last <answer> label vs the reference label (rewards.labels)      -> accuracy
    choice       letter / letter + text / text vs the gold choice (rewards.choice) -> accuracy
    grounding    last span of the last <answer> (rewards.temporal) vs gt_span     -> mIoU, R@{0.3,0.5,0.7}
    refusal      RA-RFT: answerable rows must give a span, refusable rows none    -> refusal accuracy
                 (+ the grounding metrics over the answerable rows)

Each ``score_*`` function takes the completions and the reward columns of the same rows and returns
one `Scored` per row; `aggregate` turns them into the report's numbers. Unparseable answers score 0
(they count in the denominator: a model that stops answering must not look better).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from megatron_vrft.rewards.choice import mc_accuracy, parse_choice
from megatron_vrft.rewards.labels import DEFAULT_LABELS, label_set, reference_label
from megatron_vrft.rewards.temporal import answer_span, task_kind
from megatron_vrft.rewards.text import last_block

RECALL_THRESHOLDS = (0.3, 0.5, 0.7)
METRICS = ("binary", "choice", "grounding", "refusal")


@dataclass
class Scored:
    """One row: what was parsed from the completion, its score, and metric-specific facts."""

    parsed: Any
    score: float
    extra: dict[str, Any] = field(default_factory=dict)


def temporal_iou(pred: tuple[float, float], gt: tuple[float, float]) -> float:
    """Plain IoU of two [start, end] spans in seconds (0.0 when the union is empty)."""
    union = max(pred[1], gt[1]) - min(pred[0], gt[0])
    if union <= 0:
        return 0.0
    return max(0.0, min(pred[1], gt[1]) - max(pred[0], gt[0])) / union


def score_binary(completions: Sequence[str], solutions: Sequence[Any],
                 labels: Iterable[str] = DEFAULT_LABELS) -> list[Scored]:
    """Accuracy of the ``<answer>`` label (case-insensitive) against ``solution``."""
    valid = label_set(labels, "binary accuracy")
    out = []
    for i, (completion, solution) in enumerate(zip(completions, solutions, strict=True)):
        ref = reference_label(solution, valid, i, "binary accuracy")
        block = last_block(completion, "answer")
        predicted = block.strip().lower() if block is not None else None
        out.append(Scored(predicted, float(predicted == ref), {"reference": ref}))
    return out


def score_choice(completions: Sequence[str], choices: Sequence[Sequence[str]], answers: Sequence[Any]) -> list[Scored]:
    """Multiple-choice accuracy; ``parsed`` is the stated letter (or the stated text when no letter)."""
    scores = mc_accuracy(list(completions), choices=list(choices), answer=list(answers))
    out = []
    for completion, score in zip(completions, scores, strict=True):
        block = last_block(completion, "answer")
        letter, text = parse_choice(block if block is not None else completion)
        out.append(Scored(chr(65 + letter) if letter is not None else text, float(score or 0.0)))
    return out


def _span_of(completion: str) -> tuple[float, float] | None:
    parsed = answer_span(completion)
    return None if parsed is None else parsed.span


def score_grounding(completions: Sequence[str], gt_spans: Sequence[Sequence[float]]) -> list[Scored]:
    """IoU of the answered span with ``gt_span`` (0.0 when no valid span is given)."""
    out = []
    for completion, gt in zip(completions, gt_spans, strict=True):
        span = _span_of(completion)
        gt = (float(gt[0]), float(gt[1]))
        out.append(Scored(list(span) if span else None, temporal_iou(span, gt) if span else 0.0, {"gt_span": list(gt)}))
    return out


def score_refusal(completions: Sequence[str], task_types: Sequence[str],
                  gt_spans: Sequence[Sequence[float] | None]) -> list[Scored]:
    """RA-RFT: 1.0 when an answerable row is answered with a span, or a refusable row with none.

    A completion without an ``<answer>`` block made no decision and scores 0 for both kinds, as in
    the ``refuse_iou`` reward. ``extra["iou"]`` is the grounding IoU of answerable rows.
    """
    out = []
    for i, (completion, kind_value, gt) in enumerate(zip(completions, task_types, gt_spans, strict=True)):
        kind = task_kind(kind_value, i, "refusal accuracy")
        parsed = answer_span(completion)
        if parsed is None:
            decision = None
        else:
            decision = "answer" if parsed.found else "refuse"
        extra: dict[str, Any] = {"task_type": kind, "decision": decision}
        if kind == "answerable":
            correct = decision == "answer"
            extra["iou"] = temporal_iou(parsed.span, (float(gt[0]), float(gt[1]))) if parsed and parsed.span else 0.0
        else:
            correct = decision == "refuse"
        out.append(Scored(list(parsed.span) if parsed and parsed.span else decision, float(correct), extra))
    return out


def grounding_summary(ious: Sequence[float], prefix: str = "") -> dict[str, float]:
    """``mIoU`` and ``R@t`` (fraction with IoU >= t) for t in RECALL_THRESHOLDS."""
    n = len(ious)
    out = {f"{prefix}mIoU": sum(ious) / n if n else 0.0}
    for t in RECALL_THRESHOLDS:
        out[f"{prefix}R@{t}"] = sum(1 for v in ious if v >= t) / n if n else 0.0
    return out


def aggregate(metric: str, scored: Sequence[Scored]) -> dict[str, float]:
    """The report's numbers for ``metric`` (see the module docstring)."""
    n = len(scored)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")
    if metric in ("binary", "choice"):
        return {"n": n, "accuracy": sum(s.score for s in scored) / n if n else 0.0}
    if metric == "grounding":
        return {"n": n, **grounding_summary([s.score for s in scored])}
    answerable = [s for s in scored if s.extra["task_type"] == "answerable"]
    refusable = [s for s in scored if s.extra["task_type"] == "refusable"]
    return {
        "n": n,
        "refusal_accuracy": sum(s.score for s in scored) / n if n else 0.0,
        "answerable": len(answerable),
        "refusable": len(refusable),
        "answered_rate": sum(s.score for s in answerable) / len(answerable) if answerable else 0.0,
        "refused_rate": sum(s.score for s in refusable) / len(refusable) if refusable else 0.0,
        **grounding_summary([s.extra["iou"] for s in answerable], prefix="answerable_"),
    }


def metric_for(columns: dict[str, Any]) -> str:
    """The metric a row's reward columns call for: refusal > grounding > choice > binary.

    Refusal needs an RA-RFT ``task_type`` (answerable / refusable); other task types (Time-R1's
    ``"tg"``) leave the row to the grounding metric."""
    if str(columns.get("task_type")).strip().lower() in ("answerable", "refusable"):
        return "refusal"
    if columns.get("gt_span") is not None:
        return "grounding"
    if columns.get("choices") is not None:
        return "choice"
    if columns.get("solution") is not None:
        return "binary"
    raise ValueError(f"no evaluation metric applies to a row with columns {sorted(columns)}")


def score_rows(metric: str, completions: Sequence[str], columns: Sequence[dict[str, Any]], **options) -> list[Scored]:
    """Dispatch on ``metric`` with the rows' reward columns (``Sample.columns``)."""
    def col(key):
        return [c.get(key) for c in columns]

    if metric == "binary":
        return score_binary(completions, col("solution"), **options)
    if metric == "choice":
        return score_choice(completions, col("choices"), col("answer"))
    if metric == "grounding":
        return score_grounding(completions, col("gt_span"))
    if metric == "refusal":
        return score_refusal(completions, col("task_type"), col("gt_span"))
    raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")

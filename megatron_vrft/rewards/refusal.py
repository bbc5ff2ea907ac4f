"""``explain_correction`` (seed 001, RA-RFT): did the model refuse when it should, and how close is
its corrected query to the real one.

    refusal_score   = [answer has a span]      for answerable rows
                      [answer has no span]     for refusable rows
    correction_bonus = max(0, best_cos(correction, reference_queries) - threshold)   refusable only
    reward = refusal_score + correction_bonus     in [0, 1] (answerable), [0, 1.5] (refusable)

best_cos is the highest SBERT cosine similarity between the ``<correction>`` text and any of the
row's ``reference_queries`` (threshold 0.5 in the seed). A missing, empty or ``NIL`` correction
earns no bonus. A completion without an ``<answer>`` block gets refusal_score 0.0 (no decision).
"""

from __future__ import annotations

from . import similarity
from .registry import RewardInputError, column, register_reward
from .temporal import answer_span, task_kind
from .text import last_block


def _correction_text(completion: str) -> str | None:
    text = last_block(completion, "correction")
    if text is None:
        return None
    text = text.strip()
    return None if not text or text.rstrip(".").upper() == "NIL" else text


def _references(value: object, index: int) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise RewardInputError(
            f"reward 'explain_correction': reference_queries of row {index} must be a list of str, got {value!r:.80}"
        )
    return [v for v in value if v.strip()]


@register_reward("explain_correction")
def explain_correction(completions: list[str], *, threshold: float = 0.5, **columns) -> list[float | None]:
    """Seed 001's refusal score + correction bonus (module docstring).

    columns: ``task_type`` (answerable/refusable; None = not applicable), ``reference_queries``
    (list of str per row, used for refusable rows).
    """
    n = len(completions)
    kinds = column(columns, "task_type", n, "explain_correction")
    refs_col = column(columns, "reference_queries", n, "explain_correction", required=False) or [None] * n
    rewards: list[float | None] = [None] * n
    pending: list[tuple[int, str, list[str]]] = []
    for i, completion in enumerate(completions):
        kind = task_kind(kinds[i], i, "explain_correction")
        if kind is None:
            continue
        parsed = answer_span(completion)
        if parsed is None:
            rewards[i] = 0.0
        else:
            rewards[i] = float(parsed.found if kind == "answerable" else not parsed.found)
        if kind == "refusable":
            correction = _correction_text(completion)
            refs = _references(refs_col[i], i)
            if correction is not None and refs:
                pending.append((i, correction, refs))
    if pending:
        # one batched SBERT pass for the whole batch, not one per completion
        sims = similarity.best_similarity([p[1] for p in pending], [p[2] for p in pending])
        for (i, _, _), sim in zip(pending, sims):
            rewards[i] += max(0.0, sim - threshold)  # type: ignore[operator]
    return rewards

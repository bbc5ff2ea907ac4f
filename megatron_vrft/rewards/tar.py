"""``tar``: Video-R2's Temporal Alignment Reward (seed 003), scored with an LLM judge.

Per completion:
1. the judge turns the ``<think>`` text into ``{"MM:SS" | "MM:SS-MM:SS": short sentence}``;
2. predicted and ground-truth (``temporal_grounding`` column) claims are matched one-to-one,
   predictions in time order: a pair matches when both intervals, widened by ``buffer_seconds``,
   overlap (so gaps up to 2 * buffer_seconds are bridged) and the SBERT cosine of the sentences is >= ``similarity_threshold``; each prediction
   takes its most similar still-unused GT claim;
3. score = matches / #predicted claims (0 when the think mentions no timestamp);
4. the judge also says whether THINK and ANSWER are consistent (TRUE/FALSE);
   reward = consistency * score.
Timestamps are whole seconds, as in Video-R2 (keys are rounded; reversed ranges are swapped;
open-ended or unreadable keys are dropped).

None (not applicable / unknown): the row has no usable ground truth, or a judge call finally
failed after its retries (counted by the judge client and logged).
"""

from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from . import similarity
from .judge import ChatRequest, JudgeConfig, JudgeParseError, judge_client
from .registry import RewardConfigError, RewardInputError, column, register_reward
from .text import last_block

EXTRACT_SYSTEM = (
    "You extract temporal claims from a text. Return ONLY a JSON object (no prose, no code fences) "
    "that maps every timestamp the text mentions to one short sentence (at most 10 words, ending "
    "with a period) saying what happens then according to the text. Keys are zero-padded MM:SS or "
    "HH:MM:SS; a range is START-END with one hyphen, e.g. \"00:42-00:45\". Round fractional seconds "
    "to the nearest second, convert phrases such as \"around 16 seconds\" to \"00:16\", merge repeated "
    "timestamps, order keys by start time. Use only the given text. If it mentions no timestamp, return {}."
)
EXTRACT_USER = "Extract the timestamped events from this text and return only the JSON object.\n\nText:\n{text}"
CONSISTENCY_SYSTEM = (
    "You audit reasoning. Decide whether the reasoning (THINK) and the final answer (ANSWER) are "
    "logically consistent for the question: the conclusion reached in THINK must match and support "
    "ANSWER. Ignore style and verbosity. Write TRUE or FALSE alone on the first line, then at most "
    "three sentences of justification."
)
CONSISTENCY_USER = "QUESTION:\n{question}\n\nTHINK:\n{think}\n\nANSWER:\n{answer}"

# Splits a key into start and end; the pieces themselves never contain these separators.
_KEY_SEP = re.compile(r"\s*(?:-|–|—|\bto\b)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Claim:
    """A temporal claim: [start, end] in whole seconds (start == end for a point) and its sentence."""

    start: int
    end: int
    sentence: str


def _seconds(token: str) -> int | None:
    """``HH:MM:SS``, ``MM:SS`` or plain seconds (fractions allowed) -> rounded seconds; None if unreadable."""
    t = token.strip().strip("+.,").lower()
    parts = t.split(":")
    if not t or len(parts) > 3:
        return None
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        return None
    total = 0.0
    for v in values:
        total = total * 60 + v
    return int(round(total))


def claims_from_mapping(mapping: object) -> list[Claim]:
    """Claims of a ``{timestamp key: sentence}`` mapping, sorted by interval midpoint."""
    if not isinstance(mapping, dict):
        return []
    claims = []
    for key, sentence in mapping.items():
        if not isinstance(sentence, str) or not sentence.strip():
            continue
        parts = _KEY_SEP.split(str(key).strip())
        if len(parts) > 2:
            continue
        bounds = [_seconds(p) for p in parts]
        if any(b is None for b in bounds):
            continue  # also drops open-ended ranges such as "01:10-end"
        start, end = min(bounds), max(bounds)  # type: ignore[type-var]
        claims.append(Claim(start, end, sentence.strip()))
    claims.sort(key=lambda c: (c.start + c.end) / 2)
    return claims


def parse_claims_json(text: str) -> dict:
    """The JSON object in a judge answer (code fences, a leading ``<think>`` block tolerated)."""
    close = text.rfind("</think>")
    if close >= 0:
        text = text[close + len("</think>") :]
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise JudgeParseError("no JSON object in the judge answer")
    try:
        value = json.loads(text[start : end + 1])
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise JudgeParseError(f"judge answer is not valid JSON: {type(exc).__name__}") from exc
    if not isinstance(value, dict):
        raise JudgeParseError("judge answer is JSON but not an object")
    return value


def parse_decision(text: str) -> bool:
    """TRUE/FALSE on the judge's first non-empty line; JudgeParseError when it says neither."""
    close = text.rfind("</think>")
    if close >= 0:
        text = text[close + len("</think>") :]
    for line in text.splitlines():
        first = line.strip().upper()
        if not first:
            continue
        has_true, has_false = "TRUE" in first, "FALSE" in first
        if first.startswith("TRUE") or (has_true and not has_false):
            return True
        if first.startswith("FALSE") or (has_false and not has_true):
            return False
        break
    raise JudgeParseError("judge answer has no TRUE/FALSE on its first line")


def match_claims(pred: list[Claim], gt: list[Claim], sims, buffer_seconds: float, threshold: float) -> int:
    """Number of one-to-one matches. sims: [len(pred), len(gt)] cosine similarities."""
    used: set[int] = set()
    matches = 0
    for i, p in enumerate(pred):
        best_j, best_sim = None, -math.inf
        for j, g in enumerate(gt):
            if j in used:
                continue
            overlap = p.start - buffer_seconds <= g.end + buffer_seconds and g.start - buffer_seconds <= p.end + buffer_seconds
            sim = float(sims[i][j])
            if overlap and sim >= threshold and sim > best_sim:
                best_j, best_sim = j, sim
        if best_j is not None:
            used.add(best_j)
            matches += 1
    return matches


def _gt_claims(value: object, index: int) -> list[Claim] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RewardInputError(
            f"reward 'tar': temporal_grounding of row {index} must be a {{timestamp: sentence}} dict, got {value!r:.80}"
        )
    return claims_from_mapping(value) or None


_JUDGE_OPTIONS = ("api_key_env", "timeout_s", "max_retries", "backoff_s", "concurrency", "temperature")


def _check_tar_options(**options: Any) -> JudgeConfig:
    """The judge config of ``tar``'s options (its keyword defaults for those not given; the registry
    checks the names against its signature); RewardConfigError for a bad value. Run at config load too."""
    o = {n: p.default for n, p in inspect.signature(tar).parameters.items() if p.kind is p.KEYWORD_ONLY}
    o.update(options)
    buffer_seconds, similarity_threshold = o["buffer_seconds"], o["similarity_threshold"]
    if not isinstance(buffer_seconds, (int, float)) or not math.isfinite(buffer_seconds) or buffer_seconds < 0:
        raise RewardConfigError(f"reward 'tar': buffer_seconds must be a finite number >= 0, got {buffer_seconds!r}")
    if not isinstance(similarity_threshold, (int, float)) or not -1.0 <= similarity_threshold <= 1.0:
        raise RewardConfigError(f"reward 'tar': similarity_threshold must be in [-1, 1], got {similarity_threshold!r}")
    return JudgeConfig(base_url=o["base_url"] or "", model=o["model"] or "", **{k: o[k] for k in _JUDGE_OPTIONS})


# background: the judge's network round trips overlap the trainer's logprob passes
@register_reward("tar", check_options=_check_tar_options, background=True)
def tar(
    completions: list[str],
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout_s: float = 10.0,
    max_retries: int = 3,
    backoff_s: float = 0.5,
    concurrency: int = 16,
    temperature: float | None = None,
    buffer_seconds: float = 2.0,
    similarity_threshold: float = 0.75,
    **columns,
) -> list[float | None]:
    """Temporal alignment reward (module docstring); two judge calls per scored completion.

    columns: ``temporal_grounding`` ({timestamp key: sentence} per row; None = not applicable),
    ``question`` (optional, shown to the consistency judge).
    """
    config = _check_tar_options(
        base_url=base_url, model=model, api_key_env=api_key_env, timeout_s=timeout_s, max_retries=max_retries,
        backoff_s=backoff_s, concurrency=concurrency, temperature=temperature, buffer_seconds=buffer_seconds,
        similarity_threshold=similarity_threshold,
    )
    n = len(completions)
    grounding = column(columns, "temporal_grounding", n, "tar")
    questions = column(columns, "question", n, "tar", required=False) or [None] * n

    rewards: list[float | None] = [None] * n
    gt: dict[int, list[Claim]] = {}
    requests: list[ChatRequest] = []
    asked: list[int] = []
    for i, completion in enumerate(completions):
        claims = _gt_claims(grounding[i], i)
        if claims is None:
            continue
        think = (last_block(completion, "think") or "").strip()
        if not think:
            rewards[i] = 0.0  # no reasoning -> no temporal claims; no judge call needed
            continue
        gt[i] = claims
        answer = (last_block(completion, "answer") or "").strip()
        question = str(questions[i]).strip() if questions[i] else "(none)"
        requests.append(ChatRequest(EXTRACT_SYSTEM, EXTRACT_USER.format(text=think), parse_claims_json))
        requests.append(
            ChatRequest(
                CONSISTENCY_SYSTEM,
                CONSISTENCY_USER.format(question=question, think=think, answer=answer or "(missing)"),
                parse_decision,
            )
        )
        asked.append(i)

    results = judge_client(config).run(requests)
    scored: list[tuple[int, list[Claim]]] = []
    for k, i in enumerate(asked):
        extracted, consistent = results[2 * k], results[2 * k + 1]
        if extracted is None or consistent is None:
            continue  # judge failed for this sample: reward stays None
        pred = claims_from_mapping(extracted)
        if not consistent or not pred:
            rewards[i] = 0.0
        else:
            scored.append((i, pred))

    if scored:
        # one SBERT pass over every sentence of the batch
        sentences = [c.sentence for i, pred in scored for c in pred + gt[i]]
        emb = similarity.encode(sentences)
        offset = 0
        for i, pred in scored:
            p_emb = emb[offset : offset + len(pred)]
            g_emb = emb[offset + len(pred) : offset + len(pred) + len(gt[i])]
            offset += len(pred) + len(gt[i])
            matches = match_claims(pred, gt[i], (p_emb @ g_emb.T).tolist(), buffer_seconds, similarity_threshold)
            rewards[i] = matches / len(pred)
    return rewards

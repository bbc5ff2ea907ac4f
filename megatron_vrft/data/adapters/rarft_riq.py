"""``rarft_riq``: RA-RFT refusal-aware temporal grounding annotations (one record per video).

Record: ``{"video": str, "timestamp": [s, e], "duration": float | null, "query_text"?,
"GRPO": [{"q": str, "a": "<answer>…</answer>", "r": bool, "c"?: [...], "difficulty"?}, ...]}``.
Like RA-RFT's ``load_json_dataset_rarft`` each record gives up to two rows:

- answerable: the first ``r=true`` query; ``gt_span`` (clamped to the duration), ``duration``,
  ``answer`` = its reference reply, ``reference_queries`` = the reply of one ``r=false`` query
  (RA-RFT's contrast text).
- refusable: one of the first ``refusable_pool`` ``r=false`` queries (RA-RFT picks with
  seed=global_step; we pick deterministically from ``seed`` and the record index so a run is
  reproducible); ``answer`` = its explanation, ``reference_queries`` = [the answerable query], which
  the correction is compared with; no ``gt_span``.

Paths are inconsistent in the released files (authors' absolute paths, repo-relative, ``../``), so
with a ``media_root`` they are remapped by basename (``DEFAULT_PATH_REMAP``). A null or missing
duration is read from the video header. Columns: ``task_type`` (answerable/refusable), ``gt_span``,
``duration``, ``reference_queries``, ``answer``, ``question``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from megatron_vrft.data.adapters._common import (
    LoadContext,
    check_span,
    positive_duration,
    read_json_any,
    require,
)
from megatron_vrft.data.sample import DataFormatError, Sample, SkipRecord

MODES = ("grpo",)
DEFAULT_PATH_REMAP = "basename"
VIDEO_DEFAULTS = {"fps": 2.0, "total_pixels": 3584 * 28 * 28, "min_pixels": 16 * 28 * 28}
PROMPT = (
    'The user asks to locate the event "{query}" in the video. First decide whether the event actually '
    "happens in the video. Think inside <think> </think>, citing time ranges as <timestep>xx.xx to "
    "xx.xx</timestep>. If it happens, give its start and end in seconds inside <answer> </answer> "
    '(e.g. "12.54 to 17.83") and write NIL inside <correction> </correction>. If it does not happen, '
    "explain why inside <answer> </answer> and give a corrected query that matches the video inside "
    "<correction> </correction>."
)


@dataclass
class Options:
    prompt: str = PROMPT  # ``{query}`` is replaced by the query
    rows: tuple[str, ...] = ("answerable", "refusable")
    refusable_pool: int = 3
    seed: int = 0
    system_prompt: str | None = None


def records(ctx: LoadContext, opts: Options):
    unknown = set(opts.rows) - {"answerable", "refusable"}
    if unknown or not opts.rows:
        raise DataFormatError(f"rows must be a non-empty subset of (answerable, refusable), got {opts.rows!r}")
    return read_json_any(ctx.path)


def _messages(query: str, video_path: str, opts: Options) -> list[dict]:
    messages = [{"role": "system", "content": opts.system_prompt}] if opts.system_prompt else []
    messages.append({"role": "user", "content": [{"type": "text", "text": opts.prompt.format(query=query)},
                                                 {"type": "video", "video": video_path}]})
    return messages


def convert(record: dict, where: str, ctx: LoadContext, opts: Options) -> list[Sample]:
    queries = require(record, "GRPO", list)
    if not all(isinstance(q, dict) and isinstance(q.get("q"), str) and "r" in q for q in queries):
        raise SkipRecord("bad_record", "every GRPO entry needs 'q' (str) and 'r' (bool)")
    positives = [q for q in queries if q["r"] is True]
    negatives = [q for q in queries if q["r"] is False]
    video = ctx.video(require(record, "video", str), VIDEO_DEFAULTS)
    duration = positive_duration(record.get("duration"))
    if duration is None:
        duration = ctx.duration_of(video.path)
    base_id = str(record.get("id", record.get("qid", where)))
    # Index-seeded choice: the same record gets the same refusable query in every run and worker.
    rng = random.Random(f"{opts.seed}:{where}")
    contrast = rng.choice(negatives) if negatives else None
    samples = []
    if "answerable" in opts.rows:
        if not positives:
            raise SkipRecord("missing_key", "no answerable (r=true) query in 'GRPO'")
        gt_span = check_span(require(record, "timestamp", (list, tuple)), duration)
        pos = positives[0]
        samples.append(Sample(f"{base_id}#answerable", where, _messages(pos["q"], video.path, opts), [video], None, {
            "task_type": "answerable", "gt_span": gt_span, "duration": duration, "answer": pos.get("a"),
            "reference_queries": [contrast["a"]] if contrast and contrast.get("a") else [],
            "question": pos["q"],
        }))
    if "refusable" in opts.rows and negatives:
        neg = rng.choice(negatives[: max(1, opts.refusable_pool)])
        answerable_query = positives[0]["q"] if positives else record.get("query_text")
        samples.append(Sample(f"{base_id}#refusable", where, _messages(neg["q"], video.path, opts), [video], None, {
            "task_type": "refusable", "gt_span": None, "duration": duration, "answer": neg.get("a"),
            "reference_queries": [answerable_query] if answerable_query else [],
            "question": neg["q"],
        }))
    if not samples:
        raise SkipRecord("missing_key", "no refusable (r=false) query in 'GRPO'")
    return samples

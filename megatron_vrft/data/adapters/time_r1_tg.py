"""``time_r1_tg``: Time-R1 temporal-grounding JSON (TimeRFT ``train_2k5.json`` layout).

Record: ``{"video": str, "duration": float, "timestamp": [start, end], "sentence": str, "qid"?,
"video_start"?, "video_end"?, "difficulty"?, "pred"?}``. Times are seconds from the start of the
file; ``video_start``/``video_end`` are provenance of pre-cut clips and are not used for sampling
(Time-R1 loads the whole file).
As Time-R1's loader: the sentence is lower-cased and a trailing "." dropped. Spans ending after the
video are clamped to the duration (31 items of train_2k5 need it); spans starting after it, reversed
or negative spans are skipped (``bad_timestamp``). A missing duration is read from the file.
Prompt: text before video (Time-R1 ``QUESTION_TEMPLATE_TG``); sampling defaults fps 2,
total_pixels 3584*28*28, min_pixels 16*28*28.
Columns: ``gt_span``, ``duration``, ``task_type="tg"``, ``question``.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_vrft.data.adapters._common import (
    LoadContext,
    check_span,
    positive_duration,
    read_json_any,
    require,
)
from megatron_vrft.data.sample import Sample

MODES = ("grpo",)
VIDEO_DEFAULTS = {"fps": 2.0, "total_pixels": 3584 * 28 * 28, "min_pixels": 16 * 28 * 28}
PROMPT = (
    'To accurately pinpoint the event "{event}" in the video, determine the precise time period of the '
    "event. Output your thought process within the <think> </think> tags, including analysis with either "
    "specific time ranges (xx.xx to xx.xx) in <timestep> </timestep> tags. Then, provide the start and end "
    "times (in seconds, precise to two decimal places) in the format \"start time to end time\" within the "
    "<answer> </answer> tags. For example: \"12.54 to 17.83\"."
)


@dataclass
class Options:
    prompt: str = PROMPT  # ``{event}`` is replaced by the normalised sentence
    system_prompt: str | None = None


def records(ctx: LoadContext, opts: Options):
    return read_json_any(ctx.path)


def normalise_sentence(sentence: str) -> str:
    s = sentence.strip().lower()
    return s[:-1] if s.endswith(".") else s


def convert(record: dict, where: str, ctx: LoadContext, opts: Options) -> list[Sample]:
    sentence = normalise_sentence(require(record, "sentence", str))
    span = require(record, "timestamp", (list, tuple))
    video = ctx.video(require(record, "video", str), VIDEO_DEFAULTS)
    duration = positive_duration(record.get("duration"))
    if duration is None:
        duration = ctx.duration_of(video.path)
    gt_span = check_span(span, duration)
    messages = [{"role": "system", "content": opts.system_prompt}] if opts.system_prompt else []
    messages.append({"role": "user", "content": [{"type": "text", "text": opts.prompt.format(event=sentence)},
                                                 {"type": "video", "video": video.path}]})
    sample_id = str(record.get("qid", where))
    return [Sample(sample_id, where, messages, [video], None,
                   {"gt_span": gt_span, "duration": duration, "task_type": "tg", "question": sentence})]

"""``smarthome_vad``: SmartHome-Bench video anomaly detection CSV (``Video_Annotation.csv``).

Columns: ``Title`` (``smartbench_NNNN``; the video is ``<media_root>/<Title>.mp4``), ``Category``,
``Anomaly Tag`` (``Normal`` / ``Abnormal`` / ``Vague Abnormal``; ``Label`` in
``Annotation_vad_1203.csv``), ``Video Description``, ``Reasoning behind Normality/Anomalies``.
Labels are lower-cased and ``Vague Abnormal`` counts as ``abnormal`` (the benchmark's own scoring);
any other tag is skipped as ``bad_label``.

- sft: target ``"<think>{reasoning}</think>\\n<answer>{label}</answer>"`` (seed 000 stage 1,
  ``sft_target="reasoning"``) or ``"{label}"`` (stage 2, ``sft_target="label"``).
- grpo: prompt only.
Columns: ``solution`` and ``answer`` (the label), which the ``accuracy``/``format`` rewards read.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_vrft.data.adapters._common import LoadContext, read_csv, require
from megatron_vrft.data.sample import DataFormatError, Sample, SkipRecord

MODES = ("sft", "grpo")
PROMPT = (
    "This is a smart-home camera video. Decide whether anything abnormal happens in it. Think inside "
    "<think> </think>, then answer with exactly one word, normal or abnormal, inside <answer> </answer>."
)
LABELS = {"normal": "normal", "abnormal": "abnormal", "vague abnormal": "abnormal"}


@dataclass
class Options:
    prompt: str = PROMPT
    video_pattern: str = "{title}.mp4"  # relative to media_root (or the CSV's folder)
    sft_target: str = "reasoning"  # "reasoning" or "label"
    system_prompt: str | None = None


def records(ctx: LoadContext, opts: Options):
    if opts.sft_target not in ("reasoning", "label"):
        raise DataFormatError(f"sft_target must be 'reasoning' or 'label', got {opts.sft_target!r}")
    return read_csv(ctx.path)


def convert(record: dict, where: str, ctx: LoadContext, opts: Options) -> list[Sample]:
    title = require(record, "Title", str).strip()
    tag = record.get("Anomaly Tag") or record.get("Label")
    if not tag or not tag.strip():
        raise SkipRecord("missing_key", "no 'Anomaly Tag' (or 'Label')")
    label = LABELS.get(" ".join(tag.lower().split()))
    if label is None:
        raise SkipRecord("bad_label", f"tag {tag!r} is not Normal/Abnormal/Vague Abnormal")
    video = ctx.video(opts.video_pattern.format(title=title))
    messages = [{"role": "system", "content": opts.system_prompt}] if opts.system_prompt else []
    messages.append({"role": "user", "content": [{"type": "video", "video": video.path},
                                                 {"type": "text", "text": opts.prompt}]})
    target = None
    if ctx.mode == "sft":
        if opts.sft_target == "label":
            target = label
        else:
            reasoning = (record.get("Reasoning behind Normality/Anomalies") or "").strip()
            if not reasoning:
                raise SkipRecord("missing_key", "no 'Reasoning behind Normality/Anomalies' for sft_target='reasoning'")
            target = f"<think>{reasoning}</think>\n<answer>{label}</answer>"
        messages.append({"role": "assistant", "content": target})
    return [Sample(title, where, messages, [video], target, {"solution": label, "answer": label})]

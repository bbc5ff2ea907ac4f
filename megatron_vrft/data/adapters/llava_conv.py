"""``llava_conv``: Qwen-VL-Series-Finetune (2U1) conversation JSON.

Record: ``{"id"?, "video"|"image": str | [str], "conversations": [{"from": "human"|"gpt"|"assistant",
"value": str}, ...]}``. ``<video>``/``<image>`` placeholders (with an optional newline either side)
mark where each media item goes. Seed 000's ``reasoning_w_answer.json``, ``sft_label.json`` and
``grpo_video.json`` use it.

- sft: the whole conversation (multi-turn allowed); target = the last assistant turn.
- grpo: as 2U1's GRPO dataset: only the first (user, assistant) pair; placeholders dropped, media
  first, then the text; the assistant value becomes the ``solution`` column.
Columns: ``solution`` (the reference reply) and ``answer`` (its ``<answer>`` contents).
Sampling: 2U1 has only global ``--fps``/``--nframes`` flags, so there is no per-format default here;
pass ``video_options`` (seed 000: ``{"nframes": 8}`` for stage 1, ``{"fps": 1}`` for stage 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_vrft.data.adapters._common import (
    LoadContext,
    answer_text,
    as_list,
    conversation_messages,
    last_assistant,
    media_in_message_order,
    read_json_any,
    require,
)
from megatron_vrft.data.sample import Sample, SkipRecord

MODES = ("sft", "grpo")


@dataclass
class Options:
    system_prompt: str | None = None  # None: the chat template's default system prompt


def records(ctx: LoadContext, opts: Options):
    return read_json_any(ctx.path)


def media_refs(record: dict, ctx: LoadContext, video_defaults: dict | None = None) -> list:
    """Checked references for the record's ``image`` and ``video`` paths (images first)."""
    refs = [ctx.image(p) for p in as_list(record.get("image"))]
    refs += [ctx.video(p, video_defaults) for p in as_list(record.get("video"))]
    return refs


def convert_conversation(record: dict, where: str, ctx: LoadContext, system_prompt: str | None,
                         video_defaults: dict | None = None) -> Sample:
    """Shared by `llava_conv` and `video_r2` (same conversation layout)."""
    conversations = require(record, "conversations", list)
    text = " ".join(str(t.get("value", "")) for t in conversations if isinstance(t, dict))
    for kind in ("video", "image"):
        if f"<{kind}>" in text and not record.get(kind):
            raise SkipRecord("missing_key", f"<{kind}> placeholder but no {kind!r} path")
    media = media_refs(record, ctx, video_defaults)
    sample_id = str(record.get("id", where))
    if ctx.mode == "sft":
        messages = conversation_messages(conversations, media, system_prompt=system_prompt)
        target = last_assistant(messages)
        return Sample(sample_id, where, messages, media_in_message_order(messages, media), target,
                      {"solution": target, "answer": answer_text(target)})
    if len(conversations) < 2:
        raise SkipRecord("missing_key", "GRPO needs a (user, assistant) pair in 'conversations'")
    messages = conversation_messages(conversations[:2], media, keep_placeholders=False, system_prompt=system_prompt)
    solution = last_assistant(messages)
    prompt = messages[:-1]
    question = " ".join(i["text"] for i in prompt[-1]["content"] if i.get("type") == "text").strip()
    return Sample(sample_id, where, prompt, media_in_message_order(prompt, media), None,
                  {"solution": solution, "answer": answer_text(solution), "question": question})


def convert(record: dict, where: str, ctx: LoadContext, opts: Options) -> list[Sample]:
    return [convert_conversation(record, where, ctx, opts.system_prompt)]

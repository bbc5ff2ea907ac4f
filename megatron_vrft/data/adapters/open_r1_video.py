"""``open_r1_video``: Open-R1-Video GRPO JSON lines (seed 000's ``smarthome_grpo.jsonl``).

Record: ``{"problem": str, "solution": "<answer>B.</answer>", "video": "/abs/path.mp4",
"original_question"?, "original_answer"?}``. Paths are absolute on the machine that wrote the file;
give ``media_root`` with ``path_remap="basename"`` to find the videos elsewhere.
Prompt (Open-R1-Video ``grpo.py``): user ``[video, problem + instruction]``, no explicit system prompt.
Sampling default: 16 evenly spaced frames, at most 196*28*28 pixels per frame (its patched
qwen-vl-utils samples 2 fps and keeps 16 frames).
Columns: ``solution`` (as written) and ``answer`` (its ``<answer>`` contents).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_vrft.data.adapters._common import LoadContext, answer_text, read_jsonl, require
from megatron_vrft.data.sample import Sample

MODES = ("grpo",)
VIDEO_DEFAULTS = {"nframes": 16, "max_pixels": 196 * 28 * 28}
INSTRUCTION = (
    " Output the thinking process in <think> </think> and final answer in <answer> </answer> tags, "
    "i.e., <think> reasoning process here </think><answer> answer here </answer>."
)


@dataclass
class Options:
    instruction: str = INSTRUCTION  # appended to ``problem``
    system_prompt: str | None = None


def records(ctx: LoadContext, opts: Options):
    return read_jsonl(ctx.path)


def convert(record: dict, where: str, ctx: LoadContext, opts: Options) -> list[Sample]:
    problem = require(record, "problem", str)
    solution = require(record, "solution", str)
    video = ctx.video(require(record, "video", str), VIDEO_DEFAULTS)
    messages = [{"role": "system", "content": opts.system_prompt}] if opts.system_prompt else []
    messages.append({"role": "user", "content": [{"type": "video", "video": video.path},
                                                 {"type": "text", "text": problem + opts.instruction}]})
    sample_id = str(record.get("id", where))
    return [Sample(sample_id, where, messages, [video], None,
                   {"solution": solution, "answer": answer_text(solution), "question": problem})]

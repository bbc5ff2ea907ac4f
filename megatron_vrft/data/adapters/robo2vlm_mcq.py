"""``robo2vlm_mcq``: Robo2VLM-style multiple-choice parquet (RLinf ``robo2vlm`` / ``robo2vlmsft``).

Columns (names configurable as in RLinf's config: ``prompt_key``, ``choice_key``, ``answer_key``,
``image_keys``): ``question`` str; ``choices`` a list of str, or a string holding a Python/JSON list
(Robo2VLM-1); ``correct_answer`` a 0-based index (Robo2VLM-1) or a letter (robo2vlm-2); ``image`` a
struct ``{bytes, path}`` (HF Image feature) or raw bytes. ``path`` may be a parquet file, a
directory of them, or a glob. Image bytes are kept in memory with the sample.

Text: ``"{question}\\nChoices:\\nA. c0\\nB. c1\\n…"`` after the image items (RLinf).
- sft: no system prompt; target ``"{letter}. {choice text}"`` (RLinf ``robo2vlmsft``).
- grpo: RLinf's robot-vision system prompt asking for ``<think>`` then ``<answer>``.
Columns: ``choices`` (list of str) and ``answer`` (``"B. text"``, letter and text).
"""

from __future__ import annotations

import ast
import glob
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from megatron_vrft.data.adapters._common import LoadContext, as_list, require
from megatron_vrft.data.sample import DataFormatError, Sample, SkipRecord

MODES = ("sft", "grpo")
GRPO_SYSTEM_PROMPT = (
    "You are a helpful robot-vision assistant. Look at the image(s), reason step by step inside "
    "<think> </think>, then give the chosen option as \"letter. text\" inside <answer> </answer>."
)


@dataclass
class Options:
    prompt_key: str = "question"
    choice_key: str = "choices"
    answer_key: str = "correct_answer"
    image_keys: tuple[str, ...] = ("image",)
    id_key: str = "id"
    system_prompt: str | None = None  # grpo default: GRPO_SYSTEM_PROMPT; sft default: none
    batch_rows: int = 1024


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
    else:
        files = sorted(Path(p) for p in glob.glob(str(path))) or [path]
    if not files:
        raise DataFormatError(f"{path}: no parquet files")
    return files


def records(ctx: LoadContext, opts: Options):
    for file in _files(ctx.path):
        try:
            reader = pq.ParquetFile(file)
        except Exception as e:  # pyarrow raises several unrelated types for a non-parquet file
            raise DataFormatError(f"{file}: not a readable parquet file ({e})") from None
        missing = [k for k in (opts.prompt_key, opts.choice_key, opts.answer_key, *opts.image_keys)
                   if k not in reader.schema_arrow.names]
        if missing:
            raise DataFormatError(f"{file}: missing column(s) {missing}; columns are {reader.schema_arrow.names}")
        row = 0
        for batch in reader.iter_batches(batch_size=opts.batch_rows):
            for record in batch.to_pylist():
                yield f"{file.name}#{row}", record
                row += 1


def parse_choices(value) -> list[str]:
    """A list, or a string holding one (Python or JSON literal) -> list of str."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise SkipRecord("bad_record", f"choices {value[:60]!r} is not a list literal") from None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, (str, int, float)) for c in value):
        raise SkipRecord("bad_record", f"choices must be a non-empty list, got {value!r:.60}")
    if len(value) > 26:
        raise SkipRecord("bad_record", f"{len(value)} choices; letters allow 26")
    return [str(c) for c in value]


def answer_index(value, n: int) -> int:
    """0-based index (int or digit string) or a letter ("B", "b", "B.", "B. text") -> index."""
    if isinstance(value, bool):
        raise SkipRecord("bad_record", f"correct_answer is a bool ({value})")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
    elif isinstance(value, str) and value.strip() and value.strip()[0].isalpha() and (
            len(value.strip()) == 1 or not value.strip()[1].isalpha()):
        index = ord(value.strip()[0].upper()) - ord("A")
    else:
        raise SkipRecord("bad_record", f"correct_answer {value!r} is neither an index nor a letter")
    if not 0 <= index < n:
        raise SkipRecord("bad_record", f"correct_answer {value!r} is outside the {n} choices")
    return index


def _image_ref(value, ctx: LoadContext):
    if isinstance(value, dict):
        if value.get("bytes"):
            return ctx.image(data=value["bytes"])
        if value.get("path"):
            return ctx.image(value["path"])
        raise SkipRecord("missing_key", "image struct has neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        return ctx.image(data=bytes(value))
    if isinstance(value, str):
        return ctx.image(value)
    raise SkipRecord("missing_key", f"image is {type(value).__name__}")


def convert(record: dict, where: str, ctx: LoadContext, opts: Options) -> list[Sample]:
    question = str(require(record, opts.prompt_key))
    choices = parse_choices(require(record, opts.choice_key))
    gold = answer_index(record.get(opts.answer_key), len(choices))
    images = [_image_ref(v, ctx) for key in opts.image_keys for v in as_list(record.get(key))]
    if not images:
        raise SkipRecord("missing_key", f"no image in {list(opts.image_keys)}")
    text = question + "\nChoices:\n" + "".join(f"{chr(65 + i)}. {c}\n" for i, c in enumerate(choices))
    answer = f"{chr(65 + gold)}. {choices[gold]}"
    system = opts.system_prompt if opts.system_prompt is not None else (
        GRPO_SYSTEM_PROMPT if ctx.mode == "grpo" else None)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": [{"type": "image", "image": m.describe()} for m in images]
                     + [{"type": "text", "text": text}]})
    target = None
    if ctx.mode == "sft":
        messages.append({"role": "assistant", "content": answer})
        target = answer
    sample_id = str(record.get(opts.id_key) or where)
    return [Sample(sample_id, where, messages, images, target,
                   {"choices": choices, "answer": answer, "question": question})]

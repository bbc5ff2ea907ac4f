"""Qwen2.5-VL chat template, tokenisation with vision-pad expansion, SFT label masks, GRPO prompts.

Messages use Qwen's chat format: ``[{"role": "system"|"user"|"assistant", "content": str | [item]}]``
with items ``{"type": "text", "text": ...}``, ``{"type": "video", ...}`` or ``{"type": "image", ...}``.

`render_chat` reproduces Qwen2.5-VL's Jinja chat template character for character (a test checks it
against ``tokenizer.apply_chat_template`` with the template below) and also returns the character
spans the SFT loss covers. `encode_chat` tokenises the rendered text once (so token boundaries are
exactly the tokenizer's), marks the tokens inside those spans, and expands each single
``<|image_pad|>``/``<|video_pad|>`` into ``t*h*w / merge_size**2`` copies, as Qwen2.5-VL's HF
processor does (it repeats the pad *text* before tokenising; pads are special tokens, so expanding
the ids afterwards gives the same ids without tokenising thousands of pad strings).

Loss convention (the trainer relies on it): ``target_mask[i]`` is True when token ``i`` is something
the model must learn to produce, i.e. the content of an assistant turn and its closing
``<|im_end|>`` (so the model learns to stop). The newline after ``<|im_end|>`` is template glue that
is never generated (decoding stops at ``<|im_end|>``), so it is not a target. Packing turns this
into next-token labels (see `packing.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2.5-VL-*-Instruct's chat template (tokenizer_config.json of the released checkpoints).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"


class TemplateError(ValueError):
    """A conversation or its vision inputs cannot be encoded (names the sample when known)."""


@dataclass(frozen=True)
class VisionTokenIds:
    """Ids of the tokens the model and mRoPE treat specially."""

    image_pad: int
    video_pad: int
    vision_start: int
    vision_end: int
    im_start: int
    im_end: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "VisionTokenIds":
        ids = tokenizer.convert_tokens_to_ids(
            [IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END, IM_START, IM_END]
        )
        unk = tokenizer.unk_token_id
        missing = [t for t, i in zip((IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END, IM_START, IM_END), ids)
                   if i is None or (unk is not None and i == unk)]
        if missing:
            raise TemplateError(f"tokenizer lacks Qwen2.5-VL special tokens {missing}")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[5]
        return cls(*ids, pad=pad)


def _item_kind(item: dict) -> str:
    """Classify a content item the way the Jinja template does (image checked before video)."""
    if item.get("type") == "image" or "image" in item or "image_url" in item:
        return "image"
    if item.get("type") == "video" or "video" in item:
        return "video"
    if "text" in item:
        return "text"
    return "other"


def render_chat(
    messages: list[dict],
    *,
    add_generation_prompt: bool = False,
    add_vision_id: bool = False,
) -> tuple[str, list[tuple[int, int]]]:
    """Render messages with Qwen2.5-VL's chat template.

    Returns ``(text, loss_spans)``: the text equals ``apply_chat_template(messages, tokenize=False)``
    and ``loss_spans`` are ``[start, end)`` character ranges of each assistant turn's content plus
    its ``<|im_end|>``.
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    n_images = n_videos = 0

    def emit(s: str) -> None:
        nonlocal length
        parts.append(s)
        length += len(s)

    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise TemplateError(f"message {i}: role must be system/user/assistant, got {role!r}")
        if i == 0 and role != "system":
            emit(f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n")
        emit(f"{IM_START}{role}\n")
        start = length
        content = message.get("content")
        if isinstance(content, str):
            emit(content)
        elif isinstance(content, list):
            for item in content:
                kind = _item_kind(item)
                if kind == "image":
                    n_images += 1
                    emit((f"Picture {n_images}: " if add_vision_id else "") + VISION_START + IMAGE_PAD + VISION_END)
                elif kind == "video":
                    n_videos += 1
                    emit((f"Video {n_videos}: " if add_vision_id else "") + VISION_START + VIDEO_PAD + VISION_END)
                elif kind == "text":
                    emit(item["text"])
        else:
            raise TemplateError(f"message {i}: content must be a string or a list, got {type(content).__name__}")
        emit(IM_END)
        if role == "assistant":
            spans.append((start, length))
        emit("\n")
    if add_generation_prompt:
        emit(f"{IM_START}assistant\n")
    return "".join(parts), spans


@dataclass
class Encoded:
    """One tokenised conversation.

    input_ids:   [S] int64, vision pads already expanded.
    target_mask: [S] bool, True on tokens the SFT loss trains (assistant content + ``<|im_end|>``).
    text:        the rendered text with one pad per image/video (what vLLM wants as a prompt).
    image_grid_thw / video_grid_thw: [n, 3] int64 grids, in order of appearance.
    """

    input_ids: torch.Tensor
    target_mask: torch.Tensor
    text: str
    image_grid_thw: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.long))
    video_grid_thw: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def _as_grid(grid) -> torch.Tensor:
    if grid is None:
        return torch.zeros(0, 3, dtype=torch.long)
    return torch.as_tensor(grid, dtype=torch.long).reshape(-1, 3)


def encode_chat(
    tokenizer,
    messages: list[dict],
    *,
    image_grid_thw=None,
    video_grid_thw=None,
    merge_size: int = 2,
    add_generation_prompt: bool = False,
    add_vision_id: bool = False,
) -> Encoded:
    """Render, tokenise and expand vision pads; mark SFT targets.

    image_grid_thw: [n_img, 3] and video_grid_thw: [n_vid, 3], one row per image/video item in
    order of appearance; each pad becomes ``t*h*w // merge_size**2`` pad tokens.
    """
    text, spans = render_chat(messages, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id)
    special = VisionTokenIds.from_tokenizer(tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    grids = {special.image_pad: _as_grid(image_grid_thw), special.video_pad: _as_grid(video_grid_thw)}
    names = {special.image_pad: "image", special.video_pad: "video"}
    used = {special.image_pad: 0, special.video_pad: 0}
    merge_len = merge_size * merge_size

    out_ids: list[int] = []
    out_mask: list[bool] = []
    span_iter = iter(spans)
    span = next(span_iter, None)
    for tok_id, (char_start, _) in zip(ids, offsets):
        while span is not None and char_start >= span[1]:
            span = next(span_iter, None)
        is_target = span is not None and span[0] <= char_start < span[1]
        if tok_id in grids:
            k = used[tok_id]
            if k >= len(grids[tok_id]):
                raise TemplateError(
                    f"conversation has more {names[tok_id]} items than {names[tok_id]}_grid_thw rows "
                    f"({len(grids[tok_id])})"
                )
            t, h, w = (int(x) for x in grids[tok_id][k])
            if (t * h * w) % merge_len:
                raise TemplateError(f"{names[tok_id]} grid {[t, h, w]} is not divisible by merge_size**2={merge_len}")
            n = t * h * w // merge_len
            used[tok_id] = k + 1
            out_ids.extend([tok_id] * n)
            out_mask.extend([is_target] * n)
        else:
            out_ids.append(tok_id)
            out_mask.append(is_target)
    for tok_id, grid in grids.items():
        if used[tok_id] != len(grid):
            raise TemplateError(
                f"{names[tok_id]}_grid_thw has {len(grid)} rows but the conversation has {used[tok_id]} "
                f"{names[tok_id]} items"
            )
    return Encoded(
        input_ids=torch.tensor(out_ids, dtype=torch.long),
        target_mask=torch.tensor(out_mask, dtype=torch.bool),
        text=text,
        image_grid_thw=grids[special.image_pad],
        video_grid_thw=grids[special.video_pad],
    )


def encode_prompt(tokenizer, messages: list[dict], **kwargs) -> Encoded:
    """GRPO prompt: the conversation up to the reply, ending in ``<|im_start|>assistant\\n``.

    Raises when the last message is already an assistant turn (a prompt must end before the reply).
    """
    if messages and messages[-1].get("role") == "assistant":
        raise TemplateError("a GRPO prompt must not end with an assistant turn; use Sample.prompt_messages()")
    return encode_chat(tokenizer, messages, add_generation_prompt=True, **kwargs)


def append_completion(prompt: Encoded, completion_ids) -> Encoded:
    """Prompt + generated completion as one training sequence (GRPO logprob / update passes).

    completion_ids: [C] generated ids. They are the targets; a trailing ``<|im_end|>`` is kept as a
    target when the generator produced it and never added when it did not (truncated completions
    must not be taught to stop where they were cut).
    """
    completion = torch.as_tensor(completion_ids, dtype=torch.long).reshape(-1)
    return Encoded(
        input_ids=torch.cat([prompt.input_ids, completion]),
        target_mask=torch.cat([torch.zeros_like(prompt.target_mask), torch.ones(completion.numel(), dtype=torch.bool)]),
        text=prompt.text,
        image_grid_thw=prompt.image_grid_thw,
        video_grid_thw=prompt.video_grid_thw,
    )

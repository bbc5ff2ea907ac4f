"""Per-sample sequences (tokens, targets, 3-D positions, vision inputs) and THD sequence packing.

`encode_sample` turns a decoded `Sample` into a `SequenceItem`: the chat-templated token ids, the
target mask, and mRoPE positions computed for this sample alone (positions restart at 0 in every
sample; packing only concatenates them, it never recomputes them). `grpo_item` extends a prompt
item with a generated completion.

`pack` concatenates items into one ``[1, total]`` row for THD ``PackedSeqParams``:

    input_ids     [1, T] int64          position_ids [3, 1, T] int64
    labels        [1, T] int64          loss_mask    [1, T] float32
    cu_seqlens    [n + 1] int32         max_seqlen   int
    pixel_values / pixel_values_videos: concatenated in sample order (or None)
    image_grid_thw [n_img, 3], video_grid_thw [n_vid, 3], second_per_grid_ts [n_vid]

Label convention (mcore's: labels are already shifted, the loss is computed at every position):
``labels[i] = input_ids[i + 1]`` inside a sample and ``loss_mask[i] = target_mask[i + 1]``, so
position ``i`` is trained to predict the next token when that token is a target. The last token of
each sample has ``loss_mask = 0`` (its "next token" belongs to another sample) and its label is the
pad id. Optional padding to a multiple of ``pad_to_multiple_of`` (TP/SP/CP need it) is its own
segment in ``cu_seqlens``, fully masked, so it cannot change any real token's output.

`plan_micro_batches` groups items into micro-batches under a token budget: ``"greedy"`` keeps data
order (start a new micro-batch when the next item does not fit; resumable at any item), and
``"first_fit"`` places longest items first into the first micro-batch with room (tighter, used for
GRPO where a step's sequences are all known up front).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_vrft.data.sample import Sample
from megatron_vrft.data.template import encode_chat, encode_prompt
from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig, extend_positions, get_rope_index


class PackingError(ValueError):
    """A sequence cannot be packed (e.g. longer than the token budget)."""


@dataclass
class SequenceItem:
    """One sample's training sequence.

    input_ids [S] int64; target_mask [S] bool; position_ids [3, S] int64; vision inputs as in
    `Sample` (pixel values None when absent); prompt_len: tokens before the reply (GRPO).
    """

    sample_id: str
    input_ids: torch.Tensor
    target_mask: torch.Tensor
    position_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.long))
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.long))
    second_per_grid_ts: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    prompt_len: int = 0
    rope_delta: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def encode_sample(sample: Sample, tokenizer, rope: RopeIndexConfig, *, prompt_only: bool = False,
                  merge_size: int = 2) -> SequenceItem:
    """Tokenise a decoded sample and compute its positions.

    prompt_only=False: the whole conversation, targets on assistant turns (SFT).
    prompt_only=True: `Sample.prompt_messages` + the generation prompt (GRPO rollout input).
    """
    grids = dict(image_grid_thw=sample.image_grid_thw, video_grid_thw=sample.video_grid_thw, merge_size=merge_size)
    if prompt_only:
        enc = encode_prompt(tokenizer, sample.prompt_messages(), **grids)
    else:
        enc = encode_chat(tokenizer, sample.messages, **grids)
        if not enc.target_mask.any():
            raise PackingError(f"sample {sample.id} ({sample.source}) has no assistant turn to train on")
    seconds = sample.second_per_grid_ts
    position_ids, rope_delta = get_rope_index(enc.input_ids, rope, enc.image_grid_thw, enc.video_grid_thw, seconds)
    first_target = int(enc.target_mask.nonzero()[0]) if enc.target_mask.any() else len(enc.input_ids)
    return SequenceItem(
        sample_id=sample.id,
        input_ids=enc.input_ids,
        target_mask=enc.target_mask,
        position_ids=position_ids,
        pixel_values=sample.pixel_values,
        image_grid_thw=enc.image_grid_thw,
        pixel_values_videos=sample.pixel_values_videos,
        video_grid_thw=enc.video_grid_thw,
        second_per_grid_ts=seconds,
        prompt_len=first_target,
        rope_delta=rope_delta,
    )


def grpo_item(prompt: SequenceItem, completion_ids) -> SequenceItem:
    """Prompt item + generated completion ids [C]; targets = the completion; positions continue at
    the prompt's max + 1 (where HF/vLLM decoding placed them)."""
    completion = torch.as_tensor(completion_ids, dtype=torch.long).reshape(-1)
    return SequenceItem(
        sample_id=prompt.sample_id,
        input_ids=torch.cat([prompt.input_ids, completion]),
        target_mask=torch.cat([torch.zeros(len(prompt), dtype=torch.bool), torch.ones(completion.numel(), dtype=torch.bool)]),
        position_ids=extend_positions(prompt.position_ids, completion.numel()),
        pixel_values=prompt.pixel_values,
        image_grid_thw=prompt.image_grid_thw,
        pixel_values_videos=prompt.pixel_values_videos,
        video_grid_thw=prompt.video_grid_thw,
        second_per_grid_ts=prompt.second_per_grid_ts,
        prompt_len=len(prompt),
        rope_delta=prompt.rope_delta,
    )


@dataclass
class PackedBatch:
    """One packed micro-batch (see the module docstring for shapes)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    sample_ids: list[str]
    seq_lens: list[int]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.long))
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.long))
    second_per_grid_ts: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    num_padding: int = 0

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def sample_slices(self) -> list[slice]:
        """Token range of each real sample (padding excluded)."""
        cu = self.cu_seqlens.tolist()
        return [slice(cu[i], cu[i + 1]) for i in range(len(self.sample_ids))]

    def packed_seq_params(self):
        """mcore THD ``PackedSeqParams`` for this row: attention stays within each sample (and padding)."""
        from megatron.core.packed_seq_params import PackedSeqParams

        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=self.cu_seqlens, cu_seqlens_kv=self.cu_seqlens,
                               max_seqlen_q=self.max_seqlen, max_seqlen_kv=self.max_seqlen)


def _cat_optional(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [t for t in tensors if t is not None]
    return torch.cat(present) if present else None


def pack(items: list[SequenceItem], pad_id: int, *, pad_to_multiple_of: int = 1) -> PackedBatch:
    """Concatenate items into one THD row (positions kept per sample; see the module docstring)."""
    if not items:
        raise PackingError("cannot pack an empty list of sequences")
    ids, pos, labels, mask, lens = [], [], [], [], []
    for item in items:
        n = len(item)
        ids.append(item.input_ids)
        pos.append(item.position_ids)
        labels.append(torch.cat([item.input_ids[1:], torch.tensor([pad_id])]))
        mask.append(torch.cat([item.target_mask[1:], torch.tensor([False])]))
        lens.append(n)
    total = sum(lens)
    pad = -total % pad_to_multiple_of
    if pad:
        ids.append(torch.full((pad,), pad_id, dtype=torch.long))
        pos.append(torch.arange(pad).expand(3, -1))
        labels.append(torch.full((pad,), pad_id, dtype=torch.long))
        mask.append(torch.zeros(pad, dtype=torch.bool))
    seg = lens + ([pad] if pad else [])
    cu = torch.zeros(len(seg) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seg), 0)
    return PackedBatch(
        input_ids=torch.cat(ids).unsqueeze(0),
        position_ids=torch.cat(pos, dim=1).unsqueeze(1),
        labels=torch.cat(labels).unsqueeze(0),
        loss_mask=torch.cat(mask).to(torch.float32).unsqueeze(0),
        cu_seqlens=cu,
        max_seqlen=max(seg),
        sample_ids=[item.sample_id for item in items],
        seq_lens=lens,
        pixel_values=_cat_optional([item.pixel_values for item in items]),
        image_grid_thw=torch.cat([item.image_grid_thw for item in items]),
        pixel_values_videos=_cat_optional([item.pixel_values_videos for item in items]),
        video_grid_thw=torch.cat([item.video_grid_thw for item in items]),
        second_per_grid_ts=torch.cat([item.second_per_grid_ts.to(torch.float32) for item in items]),
        num_padding=pad,
    )


def plan_micro_batches(lengths: list[int], budget: int, method: str = "greedy") -> list[list[int]]:
    """Group item indices into micro-batches whose total length is <= ``budget`` tokens.

    greedy: in order, a new micro-batch whenever the next item does not fit.
    first_fit: longest first, each into the first micro-batch with room (first-fit decreasing);
    indices inside a micro-batch are returned in ascending order.
    An item longer than the budget raises PackingError (it would never fit).
    """
    too_long = [(i, n) for i, n in enumerate(lengths) if n > budget]
    if too_long:
        i, n = too_long[0]
        raise PackingError(f"sequence {i} has {n} tokens, more than the micro-batch budget of {budget}")
    if method == "greedy":
        bins: list[list[int]] = []
        used = budget + 1
        for i, n in enumerate(lengths):
            if used + n > budget:
                bins.append([])
                used = 0
            bins[-1].append(i)
            used += n
        return bins
    if method == "first_fit":
        bins, room = [], []
        for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
            for b, free in enumerate(room):
                if lengths[i] <= free:
                    bins[b].append(i)
                    room[b] -= lengths[i]
                    break
            else:
                bins.append([i])
                room.append(budget - lengths[i])
        return [sorted(b) for b in bins]
    raise PackingError(f"unknown packing method {method!r}; use 'greedy' or 'first_fit'")


def pack_items(items: list[SequenceItem], budget: int, pad_id: int, *, method: str = "greedy",
               pad_to_multiple_of: int = 1) -> list[PackedBatch]:
    """`plan_micro_batches` + `pack` for each micro-batch."""
    plan = plan_micro_batches([len(item) for item in items], budget, method)
    return [pack([items[i] for i in group], pad_id, pad_to_multiple_of=pad_to_multiple_of) for group in plan]

"""GRPO data across ranks: the step's prompts (decoded once), the rollout shared with the replica,
and the rollout turned into packed micro-batches and mini-batches.

Prompts. As for SFT (`trainer.data`), the leader of each DP replica (TP rank 0 of PP stage 0) reads
and decodes ``grpo.prompts_per_step / dp`` usable prompts per step (skipped samples refilled, epochs
crossed); the DP leaders agree that every rank filled its step. The leader keeps the decoded
`LoadedItem`s: their frames feed the rollout engine and their `Sample.columns` the rewards, and
their prompt `SequenceItem`s (pixels patchified from those same frames) feed the trainer. The
replica's other ranks get the prompt sequences (token side to every rank, pixels to the TP ranks of
stage 0, the only ones that run the ViT).

Rollout. Only the leader generates; its completions are broadcast to the replica
(`share_completions`). Every rank then builds the same `Rollout`: ``B*G`` sequences
(`packing.grpo_item`: prompt + completion; the G sequences of a prompt hold the SAME pixel tensor,
which is how `vision_reuse` recognises shared media), split into ``grpo.updates_per_rollout``
mini-batches of consecutive sequences, each packed into THD micro-batches (``data.pack_tokens``
tokens, or ``data.micro_batch_size`` sequences when 0). Consecutive packing keeps a prompt's
completions together, so one forward encodes the prompt's media once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist

from megatron_vrft.data.loader import LoadedItem, SampleDataset
from megatron_vrft.data.packing import PackedBatch, SequenceItem, grpo_item, pack, plan_micro_batches
from megatron_vrft.data.sample import REWARD_COLUMNS
from megatron_vrft.trainer.data import Replica, ReplicaItems

__all__ = ["PromptBatch", "PromptStream", "MicroBatch", "Rollout", "build_rollout", "share_completions",
           "reward_columns"]

_PIXELS = ("pixel_values", "pixel_values_videos")


@dataclass
class PromptBatch:
    """One step's prompts for this rank; counts are global (all DP ranks).

    items: the leader's decoded prompts (frames, reward columns), None on the other ranks;
    prompts: every rank's prompt sequences, in the same order (pixels only on PP stage 0).
    """

    items: Optional[list[LoadedItem]]
    prompts: list[SequenceItem]
    num_samples: int
    num_tokens: int
    samples_skipped: int
    state: dict = field(default_factory=dict)


class PromptStream(ReplicaItems):
    """``next_batch()`` -> this step's `PromptBatch` on every rank, or None (on every rank) at the end.

    Args: as `trainer.data.ReplicaItems` (dataset: a GRPO `SampleDataset`; local_batch: prompts per
    DP rank per step); the saved position is DP-independent, as for SFT.
    """

    def __init__(self, dataset: SampleDataset, replica: Replica, *, local_batch: int, epochs: int, seed: int, shuffle: bool,
                 num_workers: int = 0, prefetch_factor: int = 2):
        super().__init__(dataset, replica, local_batch=local_batch, epochs=epochs, seed=seed, shuffle=shuffle,
                         num_workers=num_workers, prefetch_factor=prefetch_factor, name="prompts")

    def steps_per_epoch(self) -> int:
        return len(self.sampler.order(0)) // self.local_batch

    def _leader_batch(self) -> Optional[PromptBatch]:
        skipped0 = self._skipped_total()
        items = self._take()
        (short, n, tokens, skipped), state = self._agree(
            [int(len(items) < self.local_batch), len(items), sum(len(it.sequence) for it in items),
             self._skipped_total() - skipped0])
        if short:
            return None  # some DP rank ran out of prompts: every rank stops together
        return PromptBatch(items, [it.sequence for it in items], n, tokens, skipped, state)

    def _share(self, batch: Optional[PromptBatch]) -> Optional[PromptBatch]:
        """Leader -> replica: prompt token side to every rank, pixels to the TP ranks of stage 0."""
        from megatron.core import parallel_state as ps

        leader = self.replica.is_leader
        text = None
        if leader and batch is not None:
            text = dataclasses.replace(batch, items=None, prompts=[
                dataclasses.replace(p, **dict.fromkeys(_PIXELS)) for p in batch.prompts])
        box = [text]
        dist.broadcast_object_list(box, src=self.replica.leader, group=ps.get_model_parallel_group())
        text = box[0]
        if text is None or not self.replica.first_stage:
            return batch if leader else text
        box = [[[getattr(p, f) for f in _PIXELS] for p in batch.prompts] if leader else None]
        if ps.get_tensor_model_parallel_world_size() > 1:
            dist.broadcast_object_list(box, src=self.replica.leader, group=ps.get_tensor_model_parallel_group())
        if leader:
            return batch
        prompts = [dataclasses.replace(p, **dict(zip(_PIXELS, px))) for p, px in zip(text.prompts, box[0])]
        return dataclasses.replace(text, prompts=prompts)


def share_completions(groups: Optional[list], replica) -> list:
    """The leader's ``[B][G]`` completions on every rank of its replica (collective over it)."""
    from megatron.core import parallel_state as ps

    if dist.get_world_size(ps.get_model_parallel_group()) > 1:
        box = [groups]
        dist.broadcast_object_list(box, src=replica.leader, group=ps.get_model_parallel_group())
        groups = box[0]
    return groups


def reward_columns(items: list[LoadedItem], group_size: int) -> dict[str, list[Any]]:
    """Dataset columns for the ``B*G`` completions (each prompt's columns repeated G times; a column
    a sample lacks is None for its completions)."""
    keys = [k for k in REWARD_COLUMNS if any(k in it.sample.columns for it in items)]
    return {k: [it.sample.columns.get(k) for it in items for _ in range(group_size)] for k in keys}


@dataclass
class MicroBatch:
    """One packed THD row of completions.

    packed: the row without pixels (token side; ``PackedBatch``); seqs: its sequences (media for the
    ViT: `vision_reuse` deduplicates the repeated prompt pixels); rows: their indices in the step's
    ``B*G`` order; rollout_logp: ``[N, C_max]`` the engine's logprobs, aligned with
    ``packed_logprobs``'s output; index: position in ``Rollout.micro``.
    """

    packed: PackedBatch
    seqs: list[SequenceItem]
    rows: list[int]
    rollout_logp: torch.Tensor
    index: int

    @property
    def num_tokens(self) -> int:
        return self.packed.num_tokens


@dataclass
class Rollout:
    """The step's completions as training data (see the module docstring).

    completion_lens: ``[B*G]`` int64; micro: every micro-batch of the step; minibatches: for each
    optimizer update, the indices of its micro-batches in ``micro``.
    """

    completion_lens: torch.Tensor
    micro: list[MicroBatch]
    minibatches: list[list[int]]

    def update_batches(self, k: int) -> list[MicroBatch]:
        return [self.micro[i] for i in self.minibatches[k]]


def _chunks(n: int, k: int) -> list[range]:
    """``range(n)`` cut into ``k`` consecutive near-equal parts."""
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(k)]


def build_rollout(prompts: list[SequenceItem], groups: list, *, updates: int, pack_tokens: int,
                  micro_batch_size: int, pad_id: int, pad_to_multiple_of: int = 1, device=None) -> Rollout:
    """``B`` prompts and their ``[B][G]`` completions -> `Rollout` (same on every rank of a replica).

    device: where the prompts' pixels go, once per prompt (its G sequences share the moved tensor)."""
    seqs, lps = [], []
    for prompt, group in zip(prompts, groups):
        if device is not None:
            prompt = dataclasses.replace(prompt, **{f: getattr(prompt, f).to(device) for f in _PIXELS
                                                    if getattr(prompt, f) is not None})
        for c in group:
            seqs.append(grpo_item(prompt, c.token_ids))
            lps.append(c.logprobs)
    if len(seqs) < updates:
        raise ValueError(f"grpo.updates_per_rollout = {updates} mini-batches need at least as many completions "
                         f"per rank, this rank has {len(seqs)}")
    micro, minibatches = [], []
    for part in _chunks(len(seqs), updates):
        rows = list(part)
        if pack_tokens > 0:
            plan = plan_micro_batches([len(seqs[r]) for r in rows], pack_tokens, "greedy")
        else:
            plan = [list(range(i, min(i + micro_batch_size, len(rows)))) for i in range(0, len(rows), micro_batch_size)]
        minibatches.append([])
        for group in plan:
            mb_rows = [rows[i] for i in group]
            mb_seqs = [seqs[r] for r in mb_rows]
            stripped = [dataclasses.replace(s, **dict.fromkeys(_PIXELS)) for s in mb_seqs]
            packed = pack(stripped, pad_id, pad_to_multiple_of=pad_to_multiple_of)
            width = max((len(lps[r]) for r in mb_rows), default=0)
            rollout_logp = torch.zeros(len(mb_rows), width)
            for i, r in enumerate(mb_rows):
                rollout_logp[i, : len(lps[r])] = lps[r]
            minibatches[-1].append(len(micro))
            micro.append(MicroBatch(packed, mb_seqs, mb_rows, rollout_logp, len(micro)))
    lens = torch.tensor([len(c) for g in groups for c in g], dtype=torch.long)
    return Rollout(lens, micro, minibatches)

"""Training data across ranks: each DP replica reads its share, decoded once, in equal-sized steps.

Layout. A DP replica is the TP x PP ranks that hold one copy of the model. Its *leader* (TP rank 0
of PP stage 0) is the only rank that reads and decodes samples: it owns the `DataStream` (DataLoader
workers decode the media) over ``order[dp_rank::dp]`` of each epoch's permutation. Per step it
hands its replica the step's micro-batches with two broadcasts:

    model-parallel group (all TP x PP ranks of the replica): the token-side tensors of every
        micro-batch (ids, mRoPE positions, labels, loss mask, cu_seqlens): every PP stage needs
        positions (RoPE is computed per stage), the last one labels and the loss mask;
    TP group of stage 0: the pixel values and grids (the ViT is TP-sharded and runs on stage 0 only).

Equal steps. Every DP rank takes exactly ``global_batch_size / dp`` usable samples per step:
skipped samples (bad media, too long) are refilled from the stream, and crossing an epoch boundary
continues into the next epoch. The leaders then agree (one all-reduce over their DP group) on
whether every rank filled its step (if not, the data is exhausted and every rank stops: nobody
waits in a collective for a rank that has nothing), on the global token counts, and on the number
of micro-batches: a rank with fewer micro-batches than the most splits its fullest ones, so every
DP rank runs the same number of micro-batches (the loss is normalised by global counts, so the
split changes nothing numerically).

Light items. `SFTItems` wraps the `SampleDataset` so that a DataLoader worker ships only what SFT
trains on: the sequence, its pixel values in the model's dtype (bf16 runs: bf16, which is exactly
what the patch embedding would cast them to), and neither the uint8 frames (a rollout input, not a
training one) nor the decoded sample's own float32 copy of the pixel values.

Resume: ``state_dict()`` is the DP-independent stream position after the last step handed out
(`ResumableSampler.global_state`: the epoch, the global permutation index below which every sample
was consumed or skipped, and every DP rank's own position). The leaders exchange their positions in
the step's one all-reduce, so the state is identical on every rank of the job (a checkpoint stores
rank 0's). Resumed at the same DP size every rank continues exactly where it was; at another DP
size (e.g. the same GPUs at another TP) the epoch is re-dealt from the global position.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from megatron_vrft.data.loader import DataStream, LoadedItem, ResumableSampler, SampleDataset
from megatron_vrft.data.packing import PackedBatch, pack, plan_micro_batches

__all__ = ["Replica", "ReplicaItems", "SFTItems", "StepBatch", "StepStream", "replica_layout"]

_PIXEL_FIELDS = ("pixel_values", "pixel_values_videos")


class SFTItems(Dataset):
    """A `SampleDataset` whose items carry only the SFT sequence, pixel values in ``pixel_dtype``."""

    def __init__(self, inner: SampleDataset, pixel_dtype: torch.dtype = torch.float32):
        self.inner, self.pixel_dtype = inner, pixel_dtype
        self.samples = inner.samples  # DataStream names skipped samples from these

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key: tuple[int, int]) -> LoadedItem:
        item = self.inner[key]
        if item.ok:
            seq = item.sequence
            cast = {f: getattr(seq, f).to(self.pixel_dtype) for f in _PIXEL_FIELDS if getattr(seq, f) is not None}
            item.sequence = dataclasses.replace(seq, **cast)
            item.sample = None
        return item


@dataclass(frozen=True)
class Replica:
    """Where this rank sits in its DP replica (see the module docstring)."""

    is_leader: bool
    leader: int  # global rank of the replica's leader
    first_stage: bool
    dp_rank: int
    dp_size: int


def replica_layout() -> Replica:
    """This rank's replica facts from mcore's parallel state (collective over the model-parallel group)."""
    from megatron.core import parallel_state as ps

    first = ps.is_pipeline_first_stage()
    is_leader = first and ps.get_tensor_model_parallel_rank() == 0
    group = ps.get_model_parallel_group()
    flags: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(flags, (dist.get_rank(), is_leader), group=group)
    leader = next(r for r, lead in flags if lead)
    return Replica(is_leader, leader, first, ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())


@dataclass
class StepBatch:
    """One optimizer step's data for this rank; counts are global (all DP ranks)."""

    micro_batches: list[PackedBatch]
    num_samples: int
    num_tokens: int
    num_loss_tokens: int
    samples_skipped: int
    state: dict = field(default_factory=dict)


def _split_fullest(groups: list[list[int]]) -> list[list[int]]:
    """Splits the group with the most items in two (keeps data order inside the halves)."""
    i = max(range(len(groups)), key=lambda k: len(groups[k]))
    g = groups[i]
    return groups[:i] + [g[: len(g) // 2], g[len(g) // 2:]] + groups[i + 1:]


class ReplicaItems:
    """The leader's side of reading, shared by the SFT (`StepStream`) and GRPO (`PromptStream`) streams:
    this DP rank's share of each epoch (``order[dp_rank::dp]``), skips counted, epochs crossed, and the
    DP-independent position (module docstring) agreed in each step's one all-reduce.

    Args: dataset (read by the leader only), replica (`replica_layout()`), local_batch (usable samples
    per DP rank per step), epochs, seed/shuffle (sampling order), num_workers / prefetch_factor
    (DataLoader workers decoding media), name (for the skip report).
    """

    def __init__(self, dataset: Dataset, replica: Replica, *, local_batch: int, epochs: int, seed: int,
                 shuffle: bool, num_workers: int = 0, prefetch_factor: int = 2, name: str = "train"):
        self.replica, self.local_batch, self.epochs = replica, local_batch, epochs
        self.sampler = ResumableSampler(len(dataset), seed=seed, shuffle=shuffle, rank=replica.dp_rank,
                                        world_size=replica.dp_size)
        self.stream = (DataStream(dataset, self.sampler, num_workers=num_workers, prefetch_factor=prefetch_factor,
                                  name=name) if replica.is_leader else None)
        self._items: Optional[Iterator[LoadedItem]] = None
        self._state = self._initial_state()

    def _initial_state(self) -> dict:
        """The state before any step: every DP rank at this sampler's (shared) position."""
        return self.sampler.global_state([self.sampler.local_state()] * self.replica.dp_size)

    def _epochs(self) -> Iterator[LoadedItem]:
        while self.sampler.epoch < self.epochs:
            yield from self.stream._items()
            self.stream._end_epoch()

    def _skipped_total(self) -> int:
        """Samples skipped so far: finished epochs' reports plus the current one."""
        done, current = self.stream.reports, self.stream.report
        return sum(r.num_skipped for r in done) + (0 if any(r is current for r in done) else current.num_skipped)

    def _take(self) -> list[LoadedItem]:
        """Up to ``local_batch`` usable items (fewer only when the last epoch ends)."""
        if self._items is None:
            self._items = self._epochs()
        items: list[LoadedItem] = []
        for item in self._items:
            items.append(item)
            self.sampler.position = item.position + 1
            if len(items) == self.local_batch:
                break
        return items

    def _agree(self, counts: list[int]) -> tuple[list[int], dict]:
        """Leaders: ``counts`` summed over the DP ranks, and the step's global stream state (every DP
        rank's ``(epoch, position, base)`` travels in its own slots of the same all-reduce)."""
        from megatron.core import parallel_state as ps

        dp, r, head = self.replica.dp_size, self.replica.dp_rank, len(counts)
        buf = torch.zeros(head + 3 * dp, dtype=torch.long)
        buf[:head] = torch.tensor(counts, dtype=torch.long)
        buf[head + 3 * r: head + 3 * r + 3] = torch.tensor(self.sampler.local_state())
        if dp > 1:
            dist.all_reduce(buf, group=ps.get_data_parallel_group())
        totals = buf.tolist()
        ranks = [tuple(totals[head + 3 * k: head + 3 * k + 3]) for k in range(dp)]
        return totals[:head], self.sampler.global_state(ranks)

    def next_batch(self):
        """The next step's batch on every rank of the replica (the leader reads it, `_share` hands it
        out), or None on every rank once the data is exhausted. Subclasses give `_leader_batch` and
        `_share`."""
        from megatron.core import parallel_state as ps

        batch = self._leader_batch() if self.replica.is_leader else None
        if dist.get_world_size(ps.get_model_parallel_group()) > 1:
            batch = self._share(batch)
        if batch is not None:
            self._state = batch.state
        return batch

    def restart(self) -> None:
        """Back to the first sample of epoch 0 (eval streams, before each evaluation)."""
        self.sampler.epoch, self.sampler.position, self.sampler.base = 0, 0, 0
        self._items = None
        self._state = self._initial_state()

    def state_dict(self) -> dict:
        """The DP-independent position after the last step handed out (same dict on every rank)."""
        return self._state

    def load_state_dict(self, state: dict) -> None:
        """Continues from `state_dict()` of a run at this or another DP size (module docstring)."""
        self.sampler.load_global_state(state)
        self._items = None
        self._state = state if state["world_size"] == self.replica.dp_size else self._initial_state()


class StepStream(ReplicaItems):
    """``next_batch()`` -> the next `StepBatch` (same on all ranks of a replica), or None when exhausted.

    Args (besides `ReplicaItems`'):
        micro_batch_size / pack_tokens: samples per micro-batch, or a token budget for greedy
            THD packing when ``pack_tokens > 0``.
        pad_id / pad_to_multiple_of: passed to `packing.pack`.
        allow_partial: yield a short last step (eval) instead of stopping when a rank runs dry.
    """

    def __init__(self, dataset: Dataset, replica: Replica, *, local_batch: int, epochs: int, seed: int,
                 shuffle: bool, micro_batch_size: int = 1, pack_tokens: int = 0, pad_id: int = 0,
                 pad_to_multiple_of: int = 1, num_workers: int = 0, prefetch_factor: int = 2,
                 allow_partial: bool = False, name: str = "train"):
        super().__init__(dataset, replica, local_batch=local_batch, epochs=epochs, seed=seed, shuffle=shuffle,
                         num_workers=num_workers, prefetch_factor=prefetch_factor, name=name)
        self.micro_batch_size, self.pack_tokens = micro_batch_size, pack_tokens
        self.pad_id, self.pad_to_multiple_of, self.allow_partial = pad_id, pad_to_multiple_of, allow_partial

    # ---- leader side ---------------------------------------------------------------------------
    def _groups(self, items: list[LoadedItem]) -> list[list[int]]:
        if self.pack_tokens > 0:
            return plan_micro_batches([len(it.sequence) for it in items], self.pack_tokens, "greedy")
        n = self.micro_batch_size
        return [list(range(i, min(i + n, len(items)))) for i in range(0, len(items), n)]

    def _leader_batch(self) -> Optional[StepBatch]:
        from megatron.core import parallel_state as ps

        skipped0 = self._skipped_total()
        items = self._take()
        groups = self._groups(items) if items else []
        seqs = [it.sequence for it in items]
        loss_tokens = sum(int(s.target_mask[1:].sum()) for s in seqs)
        totals, state = self._agree([int(len(items) < self.local_batch), int(not items), len(items),
                                     sum(len(s) for s in seqs), loss_tokens, self._skipped_total() - skipped0])
        short, empty, n_samples, n_tokens, n_loss, n_skipped = totals
        if empty or (short and not self.allow_partial):
            return None
        most = torch.tensor([len(groups)], dtype=torch.long)
        if self.replica.dp_size > 1:
            dist.all_reduce(most, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
        while len(groups) < int(most):
            groups = _split_fullest(groups)
        micro = [pack([seqs[i] for i in g], self.pad_id, pad_to_multiple_of=self.pad_to_multiple_of) for g in groups]
        return StepBatch(micro, n_samples, n_tokens, n_loss, n_skipped, state)

    # ---- every rank ----------------------------------------------------------------------------
    def _share(self, batch: Optional[StepBatch]) -> Optional[StepBatch]:
        """Leader -> replica: token-side tensors to every rank, pixels to the TP ranks of stage 0."""
        from megatron.core import parallel_state as ps

        text = None
        if self.replica.is_leader and batch is not None:
            stripped = [dataclasses.replace(m, **dict.fromkeys(_PIXEL_FIELDS)) for m in batch.micro_batches]
            text = dataclasses.replace(batch, micro_batches=stripped)
        box = [text]
        dist.broadcast_object_list(box, src=self.replica.leader, group=ps.get_model_parallel_group())
        text = box[0]
        if text is None or not self.replica.first_stage:
            return text
        if self.replica.is_leader:
            pixels = [[getattr(m, f) for f in _PIXEL_FIELDS] for m in batch.micro_batches]
        else:
            pixels = None
        if ps.get_tensor_model_parallel_world_size() > 1:
            box = [pixels]
            dist.broadcast_object_list(box, src=self.replica.leader, group=ps.get_tensor_model_parallel_group())
            pixels = box[0]
        micro = [dataclasses.replace(m, **dict(zip(_PIXEL_FIELDS, px))) for m, px in zip(text.micro_batches, pixels)]
        return dataclasses.replace(text, micro_batches=micro)

"""Deterministic, resumable sampling; media decoding in DataLoader workers; skip accounting; packing.

Flow per epoch::

    ResumableSampler -> (position, index) -> SampleDataset.__getitem__ in a worker:
        decode media once (Sample.with_visuals), tokenise + mRoPE (SFT) or build the prompt (GRPO)
    -> DataStream (main process): drops skipped items (counted by reason), groups the rest:
        grpo_batches(n): n decoded samples per step (same frames for rollout and training)
        micro_batches(budget): SFT items packed greedily under a token budget (PackedBatch)

A bad media file skips its sample (reason from the `MediaError`), the epoch goes on, and one
summary line per epoch is logged. Resume: `DataStream.state_dict()` records the epoch and the
position of the first sample not yet handed to the trainer; after `load_state_dict` the stream
continues with exactly that sample (same order: the permutation depends only on seed and epoch).

With several data-parallel ranks each rank reads ``order[base:][rank::world_size]`` of the epoch's
permutation (truncated to a multiple of ``world_size``; ``base`` is 0 except in an epoch resumed at
another DP size, see below). Skips can leave ranks with different numbers of usable samples; the
trainer must agree on step counts across ranks.

DP-independent position (`ResumableSampler.global_state` / `load_global_state`). Every DP rank's
``position`` is a local index into its share; local index ``j`` of rank ``r`` is the global
permutation index ``base + j * world_size + r``. The global position of an epoch is the smallest
global index not yet consumed by any rank: every sample below it has been consumed or skipped.
Resumed at the SAME DP size, every rank continues at its own saved local position (exact). At
ANOTHER DP size the epoch is re-dealt from the global position (``base`` = it, every rank at local
0); the few samples above it that faster ranks had already consumed ("in flight": fewer than
``world_size`` x the most refills one rank needed in a step) are read again, and a rank that had
already moved into the next epoch counts as done with this one (its first samples of the next epoch
are read again there too). Nothing is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from megatron_vrft.data.media import MediaError
from megatron_vrft.data.overlay import SubtitleError
from megatron_vrft.data.packing import PackedBatch, PackingError, SequenceItem, encode_sample, pack, plan_micro_batches
from megatron_vrft.data.sample import Sample, SkipReport, media_skip_reason
from megatron_vrft.data.template import TemplateError
from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig, RopeIndexError

logger = logging.getLogger(__name__)
TASKS = ("sft", "grpo")


class ResumableSampler(Sampler):
    """Yields ``(position, index)``: a seed+epoch-determined permutation, this rank's share, from
    ``position`` on. The consumer (`DataStream`) advances ``position``; the sampler itself never
    does, because DataLoader workers prefetch ahead of what the trainer has used."""

    def __init__(self, num_samples: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if num_samples < world_size:
            raise ValueError(f"{num_samples} samples cannot be split over {world_size} data-parallel ranks")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.position = 0
        self.base = 0  # global permutation index where this epoch's deal starts (module docstring)

    def permutation(self, epoch: int) -> list[int]:
        """All sample indices in ``epoch``'s order (the same for every DP size)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            return torch.randperm(self.num_samples, generator=g).tolist()
        return list(range(self.num_samples))

    def order(self, epoch: int) -> list[int]:
        """This rank's sample indices for ``epoch`` (dealt from ``base`` in the current epoch)."""
        rest = self.permutation(epoch)[self.base if epoch == self.epoch else 0:]
        usable = len(rest) - len(rest) % self.world_size
        return rest[:usable][self.rank::self.world_size]

    def global_index(self, position: int, rank: int | None = None, base: int | None = None) -> int:
        """The global permutation index of local ``position`` of DP ``rank`` (default: this rank's)."""
        base = self.base if base is None else base
        return base + position * self.world_size + (self.rank if rank is None else rank)

    def local_state(self) -> tuple[int, int, int]:
        """``(epoch, position, base)``: what `global_state` needs from each DP rank."""
        return self.epoch, self.position, self.base

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position, self.base = epoch, 0, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order(self.epoch)
        for pos in range(self.position, len(order)):
            yield pos, order[pos]

    def __len__(self) -> int:
        return len(self.order(self.epoch)) - self.position

    def _check(self, state: dict, keys: tuple[str, ...]) -> None:
        for key in keys:
            if state[key] != getattr(self, key):
                raise ValueError(f"cannot resume: data {key} was {state[key]} in the checkpoint, now {getattr(self, key)}")

    # ---- this rank's position (same DP layout only) --------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "base": self.base, "seed": self.seed,
                "num_samples": self.num_samples, "world_size": self.world_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        self._check(state, ("seed", "num_samples", "world_size", "shuffle"))
        self.epoch, self.position, self.base = int(state["epoch"]), int(state["position"]), int(state["base"])

    # ---- the DP-independent position -----------------------------------------------------------
    def global_state(self, ranks: list[tuple[int, int, int]]) -> dict:
        """The stream state of all DP ranks: ``ranks[r]`` = DP rank r's `local_state()`.
        ``epoch`` / ``position``: the oldest epoch any rank is in and its global position (every
        sample of it below ``position`` consumed or skipped); ``ranks`` / ``world_size`` let a
        resume at the same DP size continue every rank exactly."""
        if len(ranks) != self.world_size:
            raise ValueError(f"global_state needs the positions of all {self.world_size} DP ranks, got {len(ranks)}")
        epoch = min(e for e, _, _ in ranks)
        position = min(self.global_index(p, r, b) for r, (e, p, b) in enumerate(ranks) if e == epoch)
        return {"epoch": int(epoch), "position": int(min(position, self.num_samples)),
                "ranks": [[int(v) for v in r] for r in ranks], "seed": self.seed, "num_samples": self.num_samples,
                "world_size": self.world_size, "shuffle": self.shuffle}

    def load_global_state(self, state: dict) -> None:
        """Continues from a `global_state`: exactly at the same DP size, re-dealt from the global
        position at another (module docstring)."""
        self._check(state, ("seed", "num_samples", "shuffle"))
        if state["world_size"] == self.world_size:
            self.epoch, self.position, self.base = (int(v) for v in state["ranks"][self.rank])
        else:
            self.epoch, self.base, self.position = int(state["epoch"]), int(state["position"]), 0


@dataclass
class LoadedItem:
    """What a worker returns for one sampler position: a decoded sample (+ its sequence) or a skip."""

    position: int
    index: int
    sample: Sample | None = None
    sequence: SequenceItem | None = None
    skip_reason: str | None = None
    skip_detail: str = ""

    @property
    def ok(self) -> bool:
        return self.skip_reason is None


class SampleDataset(Dataset):
    """Decodes a sample's media and builds its sequence, in the worker that fetches it.

    task "sft": ``sequence`` = full conversation with targets; "grpo": ``sequence`` = the prompt
    (rollout input, with positions). Samples longer than ``max_length`` tokens are skipped
    (``too_long``) rather than truncated: cutting through vision tokens would break the model input.
    """

    def __init__(self, samples: list[Sample], tokenizer, rope: RopeIndexConfig, *, task: str = "sft",
                 max_length: int | None = None):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.samples, self.tokenizer, self.rope = samples, tokenizer, rope
        self.task, self.max_length = task, max_length

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> LoadedItem:
        position, index = key
        sample = self.samples[index]
        item = LoadedItem(position, index)
        try:
            decoded = sample.with_visuals()
            sequence = encode_sample(decoded, self.tokenizer, self.rope, prompt_only=self.task == "grpo")
        except MediaError as e:
            item.skip_reason, item.skip_detail = media_skip_reason(e), str(e)
            return item
        except (TemplateError, RopeIndexError, PackingError) as e:
            item.skip_reason, item.skip_detail = "bad_sample", str(e)
            return item
        except SubtitleError as e:  # a malformed .srt of a subtitle overlay
            item.skip_reason, item.skip_detail = "bad_subtitles", str(e)
            return item
        except OSError as e:  # a media or subtitle file that exists but cannot be read
            item.skip_reason, item.skip_detail = "unreadable_media", f"{sample.source}: {type(e).__name__}: {e}"
            return item
        if self.max_length is not None and len(sequence) > self.max_length:
            item.skip_reason = "too_long"
            item.skip_detail = f"{len(sequence)} tokens > max_length {self.max_length}"
            return item
        item.sample, item.sequence = decoded, sequence
        return item


def _collate(items: list[LoadedItem]) -> list[LoadedItem]:
    # Variable-size vision inputs cannot be stacked; batching is done by DataStream (packing).
    return items


class DataStream:
    """Epoch iteration over a `SampleDataset` with worker prefetch, skip counting and resume."""

    def __init__(self, dataset: SampleDataset, sampler: ResumableSampler, *, num_workers: int = 0,
                 prefetch_factor: int = 2, fetch_size: int = 4, name: str = "train"):
        self.dataset, self.sampler, self.name = dataset, sampler, name
        self.num_workers, self.prefetch_factor, self.fetch_size = num_workers, prefetch_factor, fetch_size
        self.report = SkipReport(name=f"{name} epoch {sampler.epoch}")
        self.reports: list[SkipReport] = []

    def _loader(self) -> DataLoader:
        kwargs = {}
        if self.num_workers > 0:
            kwargs = {"prefetch_factor": self.prefetch_factor, "persistent_workers": False}
        return DataLoader(self.dataset, batch_size=self.fetch_size, sampler=self.sampler,
                          num_workers=self.num_workers, collate_fn=_collate, **kwargs)

    def _items(self) -> Iterator[LoadedItem]:
        """Usable items of the current epoch, from the sampler's position; skips are counted."""
        self.report = SkipReport(name=f"{self.name} epoch {self.sampler.epoch}")
        for fetched in self._loader():
            for item in fetched:
                self.report.total += 1
                if item.ok:
                    self.report.kept += 1
                    yield item
                else:
                    src = self.dataset.samples[item.index].source
                    self.report.skip(item.skip_reason, src, item.skip_detail)

    def _end_epoch(self) -> None:
        (logger.warning if self.report.skipped else logger.info)("%s", self.report.summary_line())
        self.reports.append(self.report)
        self.sampler.set_epoch(self.sampler.epoch + 1)

    def grpo_batches(self, batch_size: int) -> Iterator[list[LoadedItem]]:
        """Lists of ``batch_size`` usable items (a short last list at the epoch's end), one epoch."""
        batch: list[LoadedItem] = []
        for item in self._items():
            batch.append(item)
            if len(batch) == batch_size:
                self.sampler.position = batch[-1].position + 1
                yield batch
                batch = []
        if batch:
            self.sampler.position = batch[-1].position + 1
            yield batch
        self._end_epoch()

    def micro_batches(self, budget: int, pad_id: int, *, pad_to_multiple_of: int = 1) -> Iterator[PackedBatch]:
        """SFT micro-batches for one epoch: usable items in order, greedily packed under ``budget``.

        The committed position is always the first item not yet inside a yielded micro-batch, so a
        resume rebuilds exactly the micro-batches that follow.
        """
        buffer: list[LoadedItem] = []
        used = 0
        for item in self._items():
            n = len(item.sequence)
            plan_micro_batches([n], budget)  # raises PackingError for an item that can never fit
            if buffer and used + n > budget:
                self.sampler.position = item.position
                yield pack([b.sequence for b in buffer], pad_id, pad_to_multiple_of=pad_to_multiple_of)
                buffer, used = [], 0
            buffer.append(item)
            used += n
        if buffer:
            self.sampler.position = buffer[-1].position + 1
            yield pack([b.sequence for b in buffer], pad_id, pad_to_multiple_of=pad_to_multiple_of)
        self._end_epoch()

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

"""Agreeing on failure: a rank-local block that raised fails every rank of the group, promptly.

A rank that raises between collectives never reaches the next one, and the others wait in it until
the process-group timeout (30 minutes by default). Code that is local to a rank but sits between
collectives (planning a save, writing a rank file, renaming the output, converting a gathered
family) runs inside ``agree``::

    with agree("save_mcore_checkpoint: writing rank files", group=None):
        write_my_file()          # may raise on some ranks only

At the end of the block every rank all-reduces a failure flag (one int, the only cost on success).
If any rank raised, the ranks all-gather ``(type, message)`` of each rank's exception and every
rank raises ``CollectiveError`` naming the lowest failing (global) rank and its error (chained to its own
exception where it had one, so a failing rank keeps its traceback). Every rank of ``group`` must
enter the block. What is agreed on is ``errors`` (default ``Exception``; the trainer adds torch DCP's
``CheckpointException``, a ``BaseException``); anything else (Ctrl-C, ``SystemExit``) passes
through unchanged: it reaches every rank of a torchrun job anyway. A one-rank group needs no
collective: the block's error is raised as the same ``CollectiveError`` at once.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist

__all__ = ["CollectiveError", "agree"]


class CollectiveError(RuntimeError):
    """A rank-local step failed on global ``rank`` (the lowest of ``failed_ranks``) with
    ``error_type``: ``message``."""

    def __init__(self, what: str, rank: int, error_type: str, message: str, failed_ranks: list[int]):
        self.what, self.rank, self.error_type, self.message = what, rank, error_type, message
        self.failed_ranks = failed_ranks
        others = f" (also failed: ranks {failed_ranks[1:]})" if len(failed_ranks) > 1 else ""
        super().__init__(f"{what}: rank {rank} failed with {error_type}: {message}{others}")


def _flag_device(group: Any) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def agree(what: str, group: Any = None, errors: tuple[type[BaseException], ...] = (Exception,)) -> Iterator[None]:
    """Runs the block, then raises ``CollectiveError`` on every rank of ``group`` (default: the
    world) if it raised one of ``errors`` on any (see module doc). Outside torch.distributed the
    block just runs."""
    if not dist.is_available() or not dist.is_initialized():
        yield
        return
    error: BaseException | None = None
    try:
        yield
    except errors as e:  # noqa: BLE001 - re-raised on every rank below
        error = e
    if dist.get_world_size(group) == 1:
        if error is not None:
            rank = dist.get_rank()
            raise CollectiveError(what, rank, type(error).__name__, str(error), [rank]) from error
        return
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=_flag_device(group))
    dist.all_reduce(flag, group=group)
    if flag.item() == 0:
        return
    mine = None if error is None else (type(error).__name__, str(error))
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    failed = [r for r, e in enumerate(everyone) if e is not None]
    ranks = [r if group is None else dist.get_global_rank(group, r) for r in failed]
    error_type, message = everyone[failed[0]]
    raise CollectiveError(what, ranks[0], error_type, message, ranks) from error

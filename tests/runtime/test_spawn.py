"""run_distributed: results by rank (tensors included), failures re-raised with the rank's traceback."""

from __future__ import annotations

import pytest
import torch

from megatron_vrft.testing.spawn import run_distributed


def _ranked_tensor(rank: int, n: int) -> dict:
    return {"rank": rank, "values": torch.arange(n, dtype=torch.float32) * (rank + 1)}


def _fail_on_rank_one(rank: int) -> int:
    if rank == 1:
        raise ValueError("boom on purpose")
    return rank


def test_results_come_back_by_rank_with_tensors():
    out = run_distributed(_ranked_tensor, world_size=2, args=(5,), timeout=120)
    assert [o["rank"] for o in out] == [0, 1]
    assert torch.equal(out[1]["values"], torch.arange(5, dtype=torch.float32) * 2)


def test_a_failing_rank_is_reraised_with_its_traceback():
    with pytest.raises(RuntimeError, match=r"(?s)rank 1 of _fail_on_rank_one failed:.*ValueError: boom on purpose"):
        run_distributed(_fail_on_rank_one, world_size=2, timeout=120)

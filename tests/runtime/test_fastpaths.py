"""runtime.fastpaths: the THD RoPE fast path gives mcore's own result bitwise, and falls back where
its precondition (one CP rank, per-position frequencies) does not hold."""

import pytest
import torch

from megatron.core.models.common.embeddings import rope_utils

from megatron_vrft.runtime import fastpaths


class _OneRank:
    def size(self):
        return 1

    def rank(self):
        return 0


@pytest.fixture
def patched():
    fastpaths.apply()
    fastpaths.apply()  # idempotent: still one layer over mcore's function
    yield rope_utils._apply_rotary_pos_emb_thd
    fastpaths.revert()


@pytest.mark.parametrize("interleaved", [False, True])
def test_thd_rope_fast_path_is_bitwise_mcore(patched, interleaved, monkeypatch):
    original = patched.__wrapped__
    seen = []
    bshd = rope_utils._apply_rotary_pos_emb_bshd
    monkeypatch.setattr(rope_utils, "_apply_rotary_pos_emb_bshd", lambda *a, **k: seen.append(a[1]) or bshd(*a, **k))
    assert original.__name__ == "_apply_rotary_pos_emb_thd" and not hasattr(original, "__wrapped__")
    g = torch.Generator().manual_seed(0)
    lens = [5, 1, 9, 3]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    t = torch.randn(sum(lens), 3, 8, generator=g)
    freqs = torch.randn(sum(lens), 1, 1, 8, generator=g) * 10  # mRoPE: one row per packed position
    kw = dict(rotary_interleaved=interleaved, cp_group=_OneRank())
    fast, ref = patched(t, cu, freqs, **kw), original(t, cu, freqs, **kw)
    assert seen[0] is freqs and seen[1] is not freqs  # fast path: the table itself, no re-assembly
    assert torch.equal(fast, ref)


def test_thd_rope_max_length_table_falls_back(patched, monkeypatch):
    """A [max_s, 1, 1, d] table (positions restart per sequence) is mcore's case 2: not the fast path."""
    calls = []
    original = patched.__wrapped__
    bshd = rope_utils._apply_rotary_pos_emb_bshd
    monkeypatch.setattr(rope_utils, "_apply_rotary_pos_emb_bshd", lambda *a, **k: calls.append(a[1].shape[0]) or bshd(*a, **k))
    lens = [4, 6]
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    t = torch.randn(10, 2, 8)
    table = torch.randn(6, 1, 1, 8)
    out = patched(t, cu, table, cp_group=_OneRank())
    assert calls == [10]  # mcore's own per-sequence re-assembly (4 + 6 rows), not the 6-row table
    assert torch.equal(out, original(t, cu, table, cp_group=_OneRank()))

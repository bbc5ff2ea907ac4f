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
    assert original.__name__ == "_apply_rotary_pos_emb_thd" and not hasattr(original, "__wrapped__")
    g = torch.Generator().manual_seed(0)
    lens = [5, 1, 9, 3]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    freqs = torch.randn(sum(lens), 1, 1, 8, generator=g) * 10  # mRoPE: one row per packed position
    kw = dict(rotary_interleaved=interleaved, cp_group=_OneRank())
    cos_calls = []
    cos = torch.cos
    monkeypatch.setattr(torch, "cos", lambda x: cos_calls.append(x) or cos(x))
    for heads, d in ((3, 8), (2, 12)):  # q and k of a layer; the second with a pass-through part
        t = torch.randn(sum(lens), heads, d, generator=g, requires_grad=True)
        fast, ref = patched(t, cu, freqs, **kw), original(t, cu, freqs, **kw)
        assert torch.equal(fast, ref)
        grad = torch.randn(fast.shape, generator=g)
        assert torch.equal(torch.autograd.grad(fast, t, grad)[0], torch.autograd.grad(ref, t, grad)[0])
    # fast path: the cosine of the table itself, once for both calls; mcore's: once per call, of
    # the table it re-assembled from per-sequence slices
    assert [x is freqs for x in cos_calls] == [True, False, False]


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

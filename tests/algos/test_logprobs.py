"""Vocab-parallel token logprobs/entropy at temperature T against torch.log_softmax on the full
logits: values, gradients (custom backward vs autograd through log_softmax), chunking, bf16, a
packed THD batch, and TP=2 (two gloo processes, each holding half the vocabulary) vs TP=1."""

import pytest
import torch

from megatron_vrft.algos.logprobs import packed_logprobs, token_logprobs, vocab_parallel_logprobs
from megatron_vrft.data.packing import SequenceItem, grpo_item, pack
from megatron_vrft.models.qwen2_5_vl.model import MASKED_LOGIT
from megatron_vrft.testing.spawn import run_distributed

V, V_PAD = 13, 16  # 3 padding rows at MASKED_LOGIT, as the model's last stage returns them


def _logits(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, V_PAD, generator=g, dtype=torch.float64) * 3
    x[..., V:] = MASKED_LOGIT
    return x.to(dtype)


def _reference(logits, targets, temperature):
    """(logp, entropy) from log_softmax over the full (gathered) vocabulary, autograd-differentiable."""
    lsm = torch.log_softmax(logits.double() / temperature, dim=-1)
    logp = lsm.gather(-1, targets[..., None]).squeeze(-1)
    return logp, -(lsm.exp() * lsm).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_values_and_grads_match_log_softmax(temperature):
    logits = _logits((2, 5)).requires_grad_(True)
    targets = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(1))
    logp, ent = token_logprobs(logits, targets, temperature, with_entropy=True)
    ref_logp, ref_ent = _reference(logits, targets, temperature)
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=1e-12)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-12)
    g1, g2 = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    grad, = torch.autograd.grad((logp * g1).sum() + (ent * g2).sum(), logits)
    ref_grad, = torch.autograd.grad((ref_logp * g1).sum() + (ref_ent * g2).sum(), logits)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    assert grad[..., V:].abs().max() == 0  # padding never gets gradient


def test_gradcheck_and_without_entropy():
    logits = _logits((4,), seed=3).requires_grad_(True)
    targets = torch.tensor([0, 5, 12, 7])
    rows = torch.arange(4)
    assert torch.autograd.gradcheck(
        lambda x: vocab_parallel_logprobs(x, rows, targets, 0.8, with_entropy=True), (logits,))
    logp, ent = token_logprobs(logits, targets, 0.8)
    assert ent is None
    logp.sum().backward()
    ref = logits.detach().clone().requires_grad_(True)
    _reference(ref, targets, 0.8)[0].sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad, rtol=0, atol=1e-12)


def test_chunking_changes_nothing():
    logits = _logits((3, 7), seed=4).requires_grad_(True)
    targets = torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(5))
    outs = []
    for chunk in (V_PAD, 5 * V_PAD, 1 << 20):  # one token per chunk, 5 per chunk, all at once
        logp, ent = token_logprobs(logits, targets, 0.9, with_entropy=True, chunk_elements=chunk)
        grad, = torch.autograd.grad(logp.sum() + ent.sum(), logits)
        outs.append((logp, ent, grad))
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_bf16_logits_computed_in_fp32_grad_in_bf16():
    logits = _logits((2, 6), seed=6, dtype=torch.bfloat16).requires_grad_(True)
    targets = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(7))
    logp, ent = token_logprobs(logits, targets, 0.7, with_entropy=True)
    assert logp.dtype == torch.float32 and ent.dtype == torch.float32
    ref_logp, ref_ent = _reference(logits.detach().float(), targets, 0.7)
    torch.testing.assert_close(logp.double(), ref_logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=0, atol=1e-5)
    logp.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def _prompt(n, seed):
    ids = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))
    return SequenceItem(sample_id=f"p{seed}", input_ids=ids, target_mask=torch.zeros(n, dtype=torch.bool),
                        position_ids=torch.arange(n).expand(3, -1))


def test_packed_batch_only_completion_tokens():
    # Two prompts, three completions (two share a prompt), padded to a multiple of 8.
    p0, p1 = _prompt(4, 0), _prompt(3, 1)
    completions = [torch.tensor([1, 2, 3]), torch.tensor([4]), torch.tensor([5, 6, 7, 8, 9])]
    items = [grpo_item(p0, completions[0]), grpo_item(p0, completions[1]), grpo_item(p1, completions[2])]
    batch = pack(items, pad_id=0, pad_to_multiple_of=8)
    assert batch.num_padding > 0
    logits = _logits((1, batch.num_tokens), seed=8).requires_grad_(True)
    logp, ent, mask = packed_logprobs(logits, batch, 0.7, with_entropy=True)
    assert logp.shape == ent.shape == mask.shape == (3, 5)
    assert mask.sum(1).tolist() == [3, 1, 5]
    full_logp, full_ent = _reference(logits, batch.labels[0].clamp(max=V - 1)[None], 0.7)
    loss = 0.0
    for i, (sl, item, c) in enumerate(zip(batch.sample_slices(), items, completions)):
        # completion token j is predicted at position prompt_len - 1 + j of its sequence
        pos = sl.start + item.prompt_len - 1 + torch.arange(len(c))
        assert torch.equal(batch.labels[0, pos], c)
        torch.testing.assert_close(logp[i, : len(c)], full_logp[0, pos], rtol=0, atol=1e-12)
        torch.testing.assert_close(ent[i, : len(c)], full_ent[0, pos], rtol=0, atol=1e-12)
        assert (logp[i, len(c):] == 0).all() and (mask[i, len(c):] == 0).all()
        loss = loss + full_logp[0, pos].sum()
    grad, = torch.autograd.grad((logp * mask).sum(), logits)
    ref, = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(grad, ref, rtol=0, atol=1e-12)


def _tp_worker(rank, logits, targets, g_logp, g_ent, temperature):
    from megatron.core import parallel_state as ps

    from megatron_vrft.runtime import destroy_distributed, init_distributed

    init_distributed(tp=2, seed=0)
    try:
        v_local = logits.shape[-1] // 2
        shard = logits[..., rank * v_local:(rank + 1) * v_local].clone().requires_grad_(True)
        assert ps.get_tensor_model_parallel_world_size() == 2
        logp, ent = token_logprobs(shard, targets, temperature, with_entropy=True, chunk_elements=3 * v_local)
        (logp * g_logp + ent * g_ent).sum().backward()
        return logp.detach(), ent.detach(), shard.grad
    finally:
        destroy_distributed()


def test_tp2_equals_tp1_and_full_log_softmax():
    # Targets on both halves of the vocabulary; the padding sits in rank 1's half.
    logits = _logits((2, 5), seed=9)
    targets = torch.tensor([[0, 7, 8, 12, 3], [9, 1, 11, 4, 10]])
    g_logp, g_ent = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    temperature = 0.7
    outs = run_distributed(_tp_worker, 2, (logits, targets, g_logp, g_ent, temperature), timeout=120)
    full = logits.clone().requires_grad_(True)
    tp1_logp, tp1_ent = token_logprobs(full, targets, temperature, with_entropy=True)
    (tp1_logp * g_logp + tp1_ent * g_ent).sum().backward()
    ref = logits.clone().requires_grad_(True)
    ref_logp, ref_ent = _reference(ref, targets, temperature)
    (ref_logp * g_logp + ref_ent * g_ent).sum().backward()
    for logp, ent, _ in outs:
        torch.testing.assert_close(logp, tp1_logp.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(ent, tp1_ent.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(logp, ref_logp.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(ent, ref_ent.detach(), rtol=0, atol=1e-12)
    grad = torch.cat([outs[0][2], outs[1][2]], dim=-1)
    torch.testing.assert_close(grad, full.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref.grad, rtol=0, atol=1e-12)

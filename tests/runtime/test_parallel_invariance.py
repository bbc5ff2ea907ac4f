"""TP=2, PP=2 and DP=2 (plain and with the distributed optimizer) train to the same losses as TP=1.

A small mcore GPTModel with Qwen2.5-VL's LLM features (RMSNorm, GQA, qkv bias, SwiGLU, mRoPE)
starts from one set of global weights, sharded per layout, and takes optimizer steps (Adam, gradient
clipping at 1.0, which is active at every step here) through mcore's pipeline schedule, DDP and
optimizer on gloo. Losses and grad norms must match the single-process TP=1 run to 1e-5 (fp32).
"""

import pytest
import torch

from megatron_vrft.testing.spawn import run_distributed
from megatron_vrft.testing.tiny_gpt import TinyGPTShape

SHAPE = TinyGPTShape()
STEPS = 4
MICRO_BATCHES, MICRO_BATCH, SEQ = 4, 2, 16
TOL = 1e-5


def _batches():
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(0, SHAPE.vocab, (MICRO_BATCHES, MICRO_BATCH, SEQ + 1), generator=g)
    t = torch.arange(SEQ)
    # distinct temporal / height / width position ids, so mRoPE's three sections all matter
    pos = torch.stack([t, t // 2, (t * 3) % 5]).view(3, 1, SEQ).expand(3, MICRO_BATCH, SEQ).contiguous()
    return [(ids[i, :, :-1].contiguous(), ids[i, :, 1:].contiguous(), pos) for i in range(MICRO_BATCHES)]


def train_layouts(rank, layouts, clip_grad=1.0):
    """Runs each (name, tp, pp, distributed_optimizer) layout in turn; returns {name: (losses, norms)}."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_vrft.runtime import init_distributed
    from megatron_vrft.testing.tiny_gpt import build_tiny_gpt, global_weights, shard_weights

    torch.set_num_threads(1)
    weights = global_weights(SHAPE, seed=0)
    out = {}
    for name, tp, pp, dist_opt in layouts:
        init_distributed(tp=tp, pp=pp, seed=7)
        model = build_tiny_gpt(SHAPE)
        missing, unexpected = model.load_state_dict(shard_weights(weights, SHAPE), strict=False)
        assert not unexpected and all("_extra_state" in k for k in missing), (missing, unexpected)
        ddp = DistributedDataParallel(
            model.config, DistributedDataParallelConfig(use_distributed_optimizer=dist_opt), model
        )
        # The schedule all-reduces DP grads (and PP-tied embeddings) only through this hook.
        ddp.config.finalize_model_grads_func = finalize_model_grads
        ddp.config.no_sync_func = ddp.no_sync
        opt = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=clip_grad, use_distributed_optimizer=dist_opt),
            [ddp],
        )
        dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        mine = _batches()[dp_rank::dp]

        def forward_step(data_iter, m):
            ids, labels, pos = next(data_iter)
            loss = m(ids, pos, None, labels=labels)

            def loss_fn(per_token):
                mean = per_token.float().mean()
                # clone: the schedule divides the returned loss in place by num_microbatches
                return mean, {"loss": mean.detach().clone()}

            return loss, loss_fn

        losses, norms = [], []
        for _ in range(STEPS):
            ddp.zero_grad_buffer()
            opt.zero_grad()
            stats = get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=iter(mine),
                model=[ddp],
                num_microbatches=len(mine),
                seq_length=SEQ,
                micro_batch_size=MICRO_BATCH,
                forward_only=False,
            )
            ok, grad_norm, _ = opt.step()
            assert ok
            # loss of the step = mean over all micro-batches of every DP rank (last stage holds it)
            loss = torch.tensor(
                sum(s["loss"].item() for s in stats) / len(mine) if stats else float("nan")
            )
            if stats:
                dist.all_reduce(loss, group=ps.get_data_parallel_group())
                loss /= dp
            losses.append(loss.item())
            norms.append(grad_norm)
        out[name] = (losses, norms)
        ps.destroy_model_parallel()
    return out


@pytest.fixture(scope="module")
def reference():
    (ref,) = run_distributed(train_layouts, 1, ([("tp1", 1, 1, False)],), timeout=300)
    return ref["tp1"]


@pytest.fixture(scope="module")
def parallel_runs():
    layouts = [("tp2", 2, 1, False), ("pp2", 1, 2, False), ("dp2", 1, 1, False), ("dp2_distopt", 1, 1, True)]
    return run_distributed(train_layouts, 2, (layouts,), timeout=600)


def test_reference_clips_and_learns(reference):
    losses, norms = reference
    assert all(n > 1.0 for n in norms), f"grad norms {norms}: clipping at 1.0 is never exercised"
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("layout", ["tp2", "pp2", "dp2", "dp2_distopt"])
def test_layout_matches_tp1(reference, parallel_runs, layout):
    ref_losses, ref_norms = reference
    for rank_result in parallel_runs:
        losses, norms = rank_result[layout]
        if any(x != x for x in losses):  # a PP rank without the last stage holds no loss
            continue
        assert max(abs(a - b) for a, b in zip(losses, ref_losses)) <= TOL, (layout, losses, ref_losses)
        assert max(abs(a - b) for a, b in zip(norms, ref_norms)) <= TOL * 10, (layout, norms, ref_norms)
    assert any(not any(x != x for x in r[layout][0]) for r in parallel_runs)

"""mcore dist_checkpointing on CPU/gloo: a model + optimizer checkpoint saved at TP=2 resumes at TP=2
and at TP=1 x DP=2 with the same next losses as the uninterrupted run (fp32, 1e-5).

Scope, as measured with megatron-core 0.16.1 (see docs/architecture.md, "CPU runtime"):
the non-distributed optimizer's state reshards across TP; the distributed optimizer's state saves
(``fully_reshardable``) but does not load on the torch-Adam path yet, so it is not covered here.
"""

import os

import pytest
import torch

from megatron_vrft.testing.spawn import run_distributed
from tests.runtime.test_parallel_invariance import MICRO_BATCH, SEQ, SHAPE, _batches

TOL = 1e-5


def _run(rank, ckpt_dir, tp, phase):
    from megatron.core import dist_checkpointing
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
    init_distributed(tp=tp, seed=7)
    model = build_tiny_gpt(SHAPE)
    model.load_state_dict(shard_weights(global_weights(SHAPE), SHAPE), strict=False)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
    ddp.config.finalize_model_grads_func = finalize_model_grads
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=1.0), [ddp])
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    mine = _batches()[dp_rank::dp]

    def forward_step(data_iter, m):
        ids, labels, pos = next(data_iter)
        return m(ids, pos, None, labels=labels), lambda t: (t.mean(), {"loss": t.mean().detach().clone()})

    def step():
        ddp.zero_grad_buffer()
        opt.zero_grad()
        stats = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(mine), model=[ddp],
            num_microbatches=len(mine), seq_length=SEQ, micro_batch_size=MICRO_BATCH, forward_only=False,
        )
        opt.step()
        loss = torch.tensor(sum(s["loss"].item() for s in stats) / len(mine))
        torch.distributed.all_reduce(loss, group=ps.get_data_parallel_group())
        return loss.item() / dp

    def state(loading=False):
        sd = {"model": ddp.sharded_state_dict()}
        sd["optimizer"] = opt.sharded_state_dict(sd["model"], is_loading=loading)
        return sd

    losses = []
    if phase == "save":
        losses.append(step())
        os.makedirs(ckpt_dir, exist_ok=True)
        dist_checkpointing.save(state(), ckpt_dir)
    else:
        loaded = dist_checkpointing.load(state(loading=True), ckpt_dir)
        ddp.load_state_dict(loaded["model"], strict=False)
        opt.load_state_dict(loaded["optimizer"])
    losses += [step(), step()]
    ps.destroy_model_parallel()
    return losses


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("dist_ckpt") / "step1")
    losses = run_distributed(_run, 2, (ckpt, 2, "save"), timeout=300)[0]
    return ckpt, losses


@pytest.mark.parametrize("tp", [2, 1])
def test_resume_reproduces_losses(uninterrupted, tp):
    ckpt, full = uninterrupted
    resumed = run_distributed(_run, 2, (ckpt, tp, "load"), timeout=300)[0]
    assert len(full) == 3 and len(resumed) == 2
    assert max(abs(a - b) for a, b in zip(resumed, full[1:])) <= TOL, (resumed, full)

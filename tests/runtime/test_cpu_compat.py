"""Each patch of the CPU compatibility layer is needed: the mcore function it serves fails without
it on a CUDA-less machine, and works with it. Runs in a fresh spawned process (world of one, gloo)
so that the patches' on/off state is this test's alone."""

import pytest
import torch

from megatron_vrft.runtime import cpu_compat
from megatron_vrft.testing.spawn import run_distributed
from megatron_vrft.testing.tiny_gpt import TinyGPTShape

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is inactive with CUDA")

SHAPE = TinyGPTShape(layers=2, hidden=64, heads=4, groups=2, ffn=64, vocab=32)


def _model_and_optimizer(dist_opt=False, clip=1.0, build_optimizer=True):
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_vrft.testing.tiny_gpt import build_tiny_gpt

    model = build_tiny_gpt(SHAPE)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(use_distributed_optimizer=dist_opt), model)
    ddp.config.finalize_model_grads_func = finalize_model_grads
    if not build_optimizer:
        return ddp, None
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=clip, use_distributed_optimizer=dist_opt), [ddp]
    )
    return ddp, opt


def _train_step(ddp, opt, forward_only=False):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    ids = torch.randint(0, SHAPE.vocab, (1, 8))
    pos = torch.arange(8).view(1, 1, 8).expand(3, 1, 8).contiguous()

    def forward_step(_it, m):
        return m(ids, pos, None, labels=ids), lambda t: (t.mean(), {"loss": t.mean().detach().clone()})

    ddp.zero_grad_buffer()
    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([None]), model=[ddp], num_microbatches=1,
        seq_length=8, micro_batch_size=1, forward_only=forward_only,
    )
    if opt is not None:
        opt.zero_grad() if forward_only else opt.step()


def _probe_rope():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding

    rope = MultimodalRotaryEmbedding(kv_channels=8, rotary_percent=1.0)
    pos = torch.arange(5).view(1, 1, 5).expand(3, 1, 5)
    assert rope(pos, mrope_section=[1, 1, 2]).shape == (5, 1, 1, 8)


def _probe_rng():
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    model_parallel_cuda_manual_seed(11)
    before = torch.get_rng_state()
    with get_cuda_rng_tracker().fork():
        torch.rand(3)
    assert torch.equal(before, torch.get_rng_state()), "fork must not disturb the default stream"


def _probe_schedule():
    ddp, _ = _model_and_optimizer(build_optimizer=False)
    _train_step(ddp, None, forward_only=True)


PROBES = {
    "cuda_device_queries": _probe_rope,
    "rng_tracker": _probe_rng,
    "schedules_token_counter": _probe_schedule,
    "optimizer_buffers": lambda: _model_and_optimizer(),
    "distributed_optimizer": lambda: _model_and_optimizer(dist_opt=True),
}


def probe_each_patch(rank):
    """For each patch: (error text without it or None, ran cleanly with it)."""
    from megatron_vrft.runtime import init_distributed

    init_distributed(seed=3)
    results = {}
    for name, probe in PROBES.items():
        error = None
        with cpu_compat.without(name):
            try:
                probe()
            except Exception as e:  # noqa: BLE001 - the failure is the point
                error = f"{type(e).__name__}: {e}"
        probe()
        results[name] = error
    # clipping: the optimizer is built with every patch on; only its step runs without the patch
    ddp, opt = _model_and_optimizer(clip=1e-3)
    error = None
    with cpu_compat.without("grad_norm_and_clip"):
        try:
            _train_step(ddp, opt)
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"
    _train_step(ddp, opt)
    results["grad_norm_and_clip"] = error
    return results


@pytest.fixture(scope="module")
def probe_results():
    (res,) = run_distributed(probe_each_patch, 1, timeout=300)
    return res


def probe_tied_pp2(rank):
    """Tied embeddings across 2 pipeline stages: error without the patch, equal copies with it."""
    from megatron_vrft.runtime import init_distributed
    from megatron_vrft.testing.tiny_gpt import build_tiny_gpt

    init_distributed(pp=2, seed=3)
    error = None
    with cpu_compat.without("tied_embedding_sync"):
        try:
            build_tiny_gpt(SHAPE, tied=True)
        except Exception as e:  # noqa: BLE001 - the failure is the point
            error = f"{type(e).__name__}: {e}"
    model = build_tiny_gpt(SHAPE, tied=True)
    return error, float(model.shared_embedding_or_output_weight().double().sum())


def test_tied_embedding_sync_patch_across_pp_stages():
    results = run_distributed(probe_tied_pp2, 2, timeout=300)
    assert all(error is not None for error, _ in results), results
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-12)


def test_every_patch_is_probed():
    assert set(PROBES) | {"grad_norm_and_clip", "tied_embedding_sync"} == set(cpu_compat.PATCHES)


@pytest.mark.parametrize("name", sorted(set(cpu_compat.PATCHES) - {"tied_embedding_sync"}))
def test_patch_is_needed_and_sufficient(probe_results, name):
    assert probe_results[name] is not None, f"{name}: the mcore function it serves ran without it"


def test_clip_grad_scales_to_max_norm():
    """With the patch the clipped update equals a hand-computed one: SGD, one step, max_norm 0.5."""
    (res,) = run_distributed(_clip_worker, 1, timeout=200)
    norm, ratio = res
    assert norm > 0.5
    assert ratio == pytest.approx(0.5 / norm, rel=1e-4)


def _clip_worker(rank):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_vrft.runtime import init_distributed
    from megatron_vrft.testing.tiny_gpt import build_tiny_gpt

    init_distributed(seed=5)
    model = build_tiny_gpt(SHAPE)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="sgd", lr=1.0, sgd_momentum=0.0, weight_decay=0.0, clip_grad=0.5), [ddp])
    before = [p.detach().clone() for p in ddp.parameters()]
    _train_step(ddp, None)
    grads = [p.main_grad.detach().clone() for p in ddp.parameters()]
    ok, norm, _ = opt.step()
    after = list(ddp.parameters())
    delta = torch.cat([(b - a.detach()).flatten() for a, b in zip(after, before)])
    grad = torch.cat([g.flatten() for g in grads])
    assert torch.allclose(grad.norm(), torch.tensor(norm, dtype=grad.dtype), rtol=1e-5)
    return norm, (delta.norm() / grad.norm()).item()

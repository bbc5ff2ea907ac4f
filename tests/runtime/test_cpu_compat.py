"""Each patch of the CPU compatibility layer is needed: the mcore function it serves fails without
it on a CUDA-less machine with the CUDA-specific error (CPU torch's "Torch not compiled with CUDA
enabled" raised from that function, or mcore's own CUDA type check), and works with it. The
schedule's forward and backward run outside any torch-function mode. Runs in a fresh spawned process (world of one, gloo)
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


def _train_step(ddp, opt, forward_only=False, modes=None):
    """One schedule step; appends to ``modes`` whether a torch-function mode was active in the
    forward step and in the loss's backward."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    ids = torch.randint(0, SHAPE.vocab, (1, 8))
    pos = torch.arange(8).view(1, 1, 8).expand(3, 1, 8).contiguous()

    class _Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            modes.append(("backward", torch._C._is_torch_function_mode_enabled()))
            return g

    def forward_step(_it, m):
        if modes is not None:
            modes.append(("forward", torch._C._is_torch_function_mode_enabled()))
        out = m(ids, pos, None, labels=ids)
        out = _Probe.apply(out) if modes is not None else out
        return out, lambda t: (t.mean(), {"loss": t.mean().detach().clone()})

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


def _failure(probe):
    """``None`` if ``probe()`` runs, else ``(exception type name, message, "file:function" of every
    frame from the probe down to the raise)``."""
    import os
    import traceback

    try:
        probe()
    except Exception as e:  # noqa: BLE001 - the failure is the point
        frames = [f"{os.path.basename(f.filename)}:{f.name}" for f in traceback.extract_tb(e.__traceback__)]
        return type(e).__name__, str(e), frames
    return None


def probe_each_patch(rank):
    """For each patch: its probe's failure without it (``_failure``); the probe must run with it."""
    from megatron_vrft.runtime import init_distributed

    init_distributed(seed=3)
    results = {}
    for name, probe in PROBES.items():
        with cpu_compat.without(name):
            results[name] = _failure(probe)
        probe()
    # clipping: the optimizer is built with every patch on; only its step runs without the patch
    ddp, opt = _model_and_optimizer(clip=1e-3)
    with cpu_compat.without("grad_norm_and_clip"):
        results["grad_norm_and_clip"] = _failure(lambda: _train_step(ddp, opt))
    _train_step(ddp, opt)
    modes = []
    _train_step(ddp, opt, modes=modes)
    results["modes_in_schedule"] = modes
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
    with cpu_compat.without("tied_embedding_sync"):
        error = _failure(lambda: build_tiny_gpt(SHAPE, tied=True))
    model = build_tiny_gpt(SHAPE, tied=True)
    return error, float(model.shared_embedding_or_output_weight().double().sum())


def test_tied_embedding_sync_patch_across_pp_stages():
    results = run_distributed(probe_tied_pp2, 2, timeout=300)
    for error, _ in results:
        _assert_cuda_failure("tied_embedding_sync", error)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-12)


def test_every_patch_is_probed():
    assert set(PROBES) | {"grad_norm_and_clip", "tied_embedding_sync"} == set(cpu_compat.PATCHES)


NO_CUDA = ("AssertionError", "Torch not compiled with CUDA enabled")  # CPU torch's torch.cuda._lazy_init
# patch -> (exception type, message, "file:function" of the mcore function that fails)
EXPECTED = {
    "cuda_device_queries": (*NO_CUDA, "rotary_pos_embedding.py:__init__"),  # torch.cuda.current_device()
    "rng_tracker": (*NO_CUDA, "random.py:add"),  # CudaRNGStatesTracker.add: torch.cuda.get_rng_state()
    "schedules_token_counter": (*NO_CUDA, "schedules.py:forward_backward_no_pipelining"),  # zeros(device="cuda")
    "optimizer_buffers": (*NO_CUDA, "optimizer.py:__init__"),
    "grad_norm_and_clip": (*NO_CUDA, "clip_grads.py:get_grad_norm_fp32"),
    "distributed_optimizer": ("TypeError", "Wrapped parameters must be one of torch.cuda.FloatTensor,  "
                              "torch.cuda.HalfTensor, or torch.cuda.BFloat16Tensor. Received torch.FloatTensor",
                              "distrib_optimizer.py:_build_model_and_main_param_groups"),
    "tied_embedding_sync": (*NO_CUDA, "language_module.py:setup_embeddings_and_output_layer"),
}


def _assert_cuda_failure(name, failure):
    assert failure is not None, f"{name}: the mcore function it serves ran without it"
    kind, message, frames = failure
    want_kind, want_message, where = EXPECTED[name]
    assert (kind, message) == (want_kind, want_message), (name, failure)
    if want_message == NO_CUDA[1]:  # raised by torch.cuda's lazy init, called (through at most one
        # torch.cuda function) from the served function
        assert frames[-1] == "__init__.py:_lazy_init" and where in frames[-3:-1], (name, frames)
    else:  # mcore's own check of CUDA type names
        assert frames[-1] == where, (name, frames)


@pytest.mark.parametrize("name", sorted(set(cpu_compat.PATCHES) - {"tied_embedding_sync"}))
def test_patch_is_needed_and_sufficient(probe_results, name):
    _assert_cuda_failure(name, probe_results[name])


def test_schedule_forward_and_backward_run_without_a_torch_function_mode(probe_results):
    """``schedules_token_counter`` serves only the schedule's token-counter allocation: model code
    in the forward step and the backward pays no dispatch cost."""
    assert probe_results["modes_in_schedule"] == [("forward", False), ("backward", False)]


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

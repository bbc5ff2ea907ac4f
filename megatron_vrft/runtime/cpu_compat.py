"""Megatron-Core on a machine without CUDA: the compatibility layer.

megatron-core 0.16.1 assumes CUDA in a handful of places (device="cuda" allocations, CUDA RNG state,
``torch.cuda.*`` calls, optimizer checks on ``'torch.cuda.FloatTensor'`` type strings). CPU + gloo
is a supported development and CI platform for this project, so this module makes those places run
on the CPU. Nothing here changes what mcore computes: every patch only redirects a device, an RNG
state or a type check.

Rules:
- ``apply()`` is a no-op when CUDA is available; the GPU path runs mcore untouched.
- Every patch is a named entry of ``PATCHES``, with the mcore functions it serves, and can be
  switched off alone (``apply(skip=...)`` / ``without(name)``): ``tests/runtime/test_cpu_compat.py``
  shows, for each one, that the mcore function it serves fails without it.
- Patches are global to the process (mcore looks these functions up at call time), so they are
  applied once, before any mcore model, optimizer or schedule is built.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import types
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["PATCHES", "apply", "revert", "without", "applied", "CudaToCpuMode"]


class CudaToCpuMode(TorchFunctionMode):
    """Runs a block of mcore code as if the CPU were the CUDA device.

    - ``device="cuda"`` / ``device=0`` keyword arguments of tensor factories become ``"cpu"``;
      ``Tensor.cuda()`` returns the tensor itself, ``Tensor.to("cuda")`` stays on the CPU;
    - ``Tensor.type()`` (no argument) of a CPU tensor reports the CUDA type name
      (``torch.cuda.FloatTensor``): mcore's optimizers classify parameters by that string only to
      pick the fp16/bf16/fp32 code path, so reporting the CUDA name selects the right path.
    The mode is entered only around the specific mcore functions listed in ``PATCHES``, never
    globally, so ordinary model code pays no dispatch overhead.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        device = kwargs.get("device")
        if device is not None and _is_cuda_device(device):
            kwargs = {**kwargs, "device": "cpu"}
        out = func(*args, **kwargs)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and isinstance(out, str):
            if out.startswith("torch.") and not out.startswith("torch.cuda."):
                out = "torch.cuda." + out[len("torch."):]
        return out


def _is_cuda_device(device) -> bool:
    if isinstance(device, int):
        return True
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


def _on_cpu(fn: Callable) -> Callable:
    """Wraps ``fn`` so that its body runs under :class:`CudaToCpuMode`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with CudaToCpuMode():
            return fn(*args, **kwargs)

    wrapper.__megatron_vrft_cpu_wrapped__ = fn
    return wrapper


@dataclass
class Patch:
    """Replaces attributes ``module.attr`` (dotted module path) and remembers the originals."""

    name: str
    serves: str
    targets: list[tuple[str, str, Callable[[Callable], Callable]]]
    _saved: list[tuple[object, str, object]] = field(default_factory=list)

    def apply(self) -> None:
        if self._saved:
            return
        for module_path, attr, make in self.targets:
            owner = _resolve(module_path)
            # Read the raw descriptor from a class so classmethods stay classmethods.
            original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            self._saved.append((owner, attr, original))
            if isinstance(original, classmethod):
                setattr(owner, attr, classmethod(make(original.__func__)))
            else:
                setattr(owner, attr, make(original))

    def revert(self) -> None:
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)
        self._saved.clear()


def _resolve(path: str):
    """``"a.b.C"`` -> the module ``a.b`` attribute ``C`` when ``a.b.C`` is not itself a module."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module_path, _, cls = path.rpartition(".")
        return getattr(importlib.import_module(module_path), cls)


def _const(value):
    return lambda _original: value


def _cpu_rng_state(device="cuda", clone=False, graph_safe=False):
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _set_cpu_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def _wrap(fn):
    return _on_cpu(fn)


class _CpuZerosTorch(types.ModuleType):
    """``torch`` as one mcore module sees it: ``zeros(..., device="cuda")`` allocates on the CPU;
    every other attribute is torch's own (looked up on each access, so nothing is copied)."""

    def __init__(self, torch_module: types.ModuleType):
        super().__init__(torch_module.__name__)
        self._torch = torch_module

    def __getattr__(self, name: str):
        return getattr(self._torch, name)

    def zeros(self, *args, **kwargs):
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return self._torch.zeros(*args, **kwargs)


_SCHED = "megatron.core.pipeline_parallel.schedules"
_OPT = "megatron.core.optimizer.optimizer"
_CLIP = "megatron.core.optimizer.clip_grads"
_DIST_OPT = "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer"
_LM = "megatron.core.models.common.language_module.language_module.LanguageModule"

PATCHES: dict[str, Patch] = {
    p.name: p
    for p in [
        Patch(
            "cuda_device_queries",
            # These raise "Torch not compiled with CUDA enabled" on a CPU build. mcore calls them in
            # MultimodalRotaryEmbedding.forward (inv_freq on current_device), DDP's
            # _ParamAndGradBuffer (buffers on current_device), p2p_communication._communicate
            # (shape/recv buffers, synchronize after batch_isend_irecv) and DistributedOptimizer
            # (shard buffers); the CPU is the only device, so every query answers "cpu".
            "MultimodalRotaryEmbedding.forward, _ParamAndGradBuffer, p2p_communication._communicate",
            [
                ("torch.cuda", "current_device", _const(lambda: torch.device("cpu"))),
                ("torch.cuda", "synchronize", _const(lambda *a, **k: None)),
                ("torch.cuda", "empty_cache", _const(lambda *a, **k: None)),
            ],
        ),
        Patch(
            "rng_tracker",
            # model_parallel_cuda_manual_seed() seeds the TP RNG tracker with torch.cuda.manual_seed
            # and torch.cuda.get_rng_state; CudaRNGStatesTracker.fork() (dropout, TP weight init,
            # activation recompute) swaps states with _get/_set_cuda_rng_state. On CPU the tracker
            # swaps the CPU generator's state instead, which keeps its meaning: per-TP-rank
            # streams that do not disturb the default stream.
            "model_parallel_cuda_manual_seed, CudaRNGStatesTracker.add/fork",
            [
                ("torch.cuda", "get_rng_state", _const(lambda device="cuda": torch.get_rng_state())),
                ("torch.cuda", "set_rng_state", _const(lambda s, device="cuda": torch.set_rng_state(s))),
                ("torch.cuda", "manual_seed", _const(torch.manual_seed)),
                ("megatron.core.tensor_parallel.random", "_get_cuda_rng_state", _const(_cpu_rng_state)),
                ("megatron.core.tensor_parallel.random", "_set_cuda_rng_state", _const(_set_cpu_rng_state)),
            ],
        ),
        Patch(
            "schedules_token_counter",
            # forward_backward_* allocate total_num_tokens = torch.zeros([], device="cuda"), their
            # only CUDA allocation. The schedules module's own ``torch`` name is swapped for a view
            # of torch whose ``zeros`` puts device="cuda" on the CPU: the forward and backward the
            # schedule runs (model code) see plain torch, with no dispatch mode around them.
            "forward_backward_no_pipelining, forward_backward_pipelining_without/with_interleaving",
            [(_SCHED, "torch", _CpuZerosTorch)],
        ),
        Patch(
            "grad_norm_and_clip",
            # get_grad_norm_fp32 / count_zeros_fp32 allocate on device="cuda";
            # clip_grad_by_total_norm_fp32 asserts grad.type() == 'torch.cuda.FloatTensor'. Without
            # this patch gradient clipping cannot run on CPU (the probes had to turn it off). The
            # optimizer module imported these names, so both bindings are patched.
            "MegatronOptimizer.get_grad_norm / clip_grad_norm / count_zeros",
            [
                (m, f, _wrap)
                for m in (_CLIP, _OPT)
                for f in ("get_grad_norm_fp32", "clip_grad_by_total_norm_fp32", "count_zeros_fp32")
            ],
        ),
        Patch(
            "optimizer_buffers",
            # FP32Optimizer.__init__ (self._scale), MixedPrecisionOptimizer.__init__ (found_inf,
            # _dummy_overflow_buf, _scale_one) and Float16OptimizerWithFloat16Params.__init__
            # (param type check on 'torch.cuda.*Tensor') build CUDA tensors / check CUDA type names.
            "FP32Optimizer, MixedPrecisionOptimizer, Float16OptimizerWithFloat16Params constructors",
            [
                (f"{_OPT}.FP32Optimizer", "__init__", _wrap),
                (f"{_OPT}.MixedPrecisionOptimizer", "__init__", _wrap),
                (f"{_OPT}.Float16OptimizerWithFloat16Params", "__init__", _wrap),
            ],
        ),
        Patch(
            "distributed_optimizer",
            # DistributedOptimizer classifies model params by 'torch.cuda.*Tensor' type strings when
            # it builds its fp32 main-parameter shards, and allocates gather buffers on CUDA when it
            # saves/loads its parameter state.
            "DistributedOptimizer._build_model_and_main_param_groups, parameter-state save/load",
            [
                (_DIST_OPT, "_build_model_and_main_param_groups", _wrap),
                (_DIST_OPT, "get_parameter_state_dp_zero", _wrap),
                (_DIST_OPT, "load_parameter_state_from_dp_zero", _wrap),
                (_DIST_OPT, "sharded_state_dict", _wrap),
                (_DIST_OPT, "load_state_dict", _wrap),
            ],
        ),
        Patch(
            "tied_embedding_sync",
            # With tied embeddings and PP > 1 the last stage holds a copy of the word embeddings;
            # setup_embeddings_and_output_layer moves it with ``weight.data.cuda()`` before the
            # all-reduce that makes both copies equal (Qwen2.5-VL-3B ties its embeddings).
            "LanguageModule.setup_embeddings_and_output_layer",
            [(_LM, "setup_embeddings_and_output_layer", _wrap)],
        ),
    ]
}


class _DropForkCpuRngWarning(logging.Filter):
    """CudaRNGStatesTracker.fork() warns when the CPU RNG state changes inside a fork, because on
    GPU that would mean a CPU op consumed randomness by mistake. With ``rng_tracker`` applied the
    tracker's stream *is* the CPU generator, so the change is expected and the warning (one per
    dropout/init call) is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


_RNG_LOG_FILTER = _DropForkCpuRngWarning()
_RNG_LOGGER = "megatron.core.tensor_parallel.random"


def apply(skip: tuple[str, ...] | list[str] = ()) -> bool:
    """Applies every patch except those named in ``skip``; returns True when patches are active.

    Idempotent. Does nothing (returns False) when CUDA is available.
    """
    if torch.cuda.is_available():
        return False
    unknown = set(skip) - set(PATCHES)
    if unknown:
        raise ValueError(f"unknown cpu_compat patch(es) {sorted(unknown)}; known: {sorted(PATCHES)}")
    for name, patch in PATCHES.items():
        if name not in skip:
            patch.apply()
    if "rng_tracker" not in skip:
        logging.getLogger(_RNG_LOGGER).addFilter(_RNG_LOG_FILTER)
    return True


def revert() -> None:
    """Undoes every applied patch (tests use this; production code never needs it)."""
    for patch in PATCHES.values():
        patch.revert()
    logging.getLogger(_RNG_LOGGER).removeFilter(_RNG_LOG_FILTER)


def applied() -> list[str]:
    return [name for name, patch in PATCHES.items() if patch._saved]


@contextlib.contextmanager
def without(name: str) -> Iterator[None]:
    """Temporarily reverts one patch (to show that the function it serves needs it)."""
    patch = PATCHES[name]
    was_applied = bool(patch._saved)
    patch.revert()
    try:
        yield
    finally:
        if was_applied:
            patch.apply()

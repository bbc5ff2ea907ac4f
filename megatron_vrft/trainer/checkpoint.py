"""Trainer checkpoints: save / auto-resume / rotate with Megatron-Core dist_checkpointing.

    path = save_checkpoint(run)          # collective: <save_dir>/step_<N>/, atomic, keep_last rotation
    resumed = resume_if_any(run)         # newest COMPLETE checkpoint under save_dir, if any

A checkpoint directory ``step_<N>/`` holds mcore's ``torch_dist`` files (``.metadata``,
``__*.distcp``, ``common.pt``, ``metadata.json``) for: the model chunks (their
``sharded_state_dict``, keys ``model`` or ``model<i>``), the optimizer (the distributed one in
``fully_reshardable`` form), the LR scheduler, the data-stream position, ``step`` and
``consumed_samples`` (common state), and every rank's RNG states (python, numpy, torch, CUDA, mcore's
TP tracker; a ``ShardedObject`` per rank); plus ``trainer_state.json`` (format, step, layout, the HF
config: read before any tensor) and ``COMPLETE``. It is written in ``step_<N>.tmp-<pid>`` and
renamed when every rank has written (``checkpoint/atomic.py``), so a crash at any moment leaves no
directory that looks complete. mcore reshards model and optimizer to another TP/PP/DP at load; the
RNG states are restored only at the saved layout (other layouts keep the run's seeded streams).

Loading never runs pickled code (``checkpoint/safe_load.py``). Initial weights (``model.hf_path``,
``model.mcore_path``, ``checkpoint.pretrained_path``) and the HF export live in ``trainer/weights_io.py``.

The distributed optimizer on the torch-Adam path (no Apex/TE, so every CPU run and GPU runs without
TE) cannot be loaded by mcore 0.16.1's own ``DistributedOptimizer.load_state_dict``:
(1) ``sharded_state_dict(is_loading=True)`` calls ``state_dict()``, which asserts exactly one ``step``
value in the (still empty) Adam state; (2) ``load_parameter_state_from_fully_reshardable`` skips
``step`` in the loaded tensors but ``_set_main_param_and_optimizer_states`` copies every key of the
Adam state, ``step`` included -> ``KeyError: 'step'``; (3) ``load_state_dict`` gives every parameter
the same ``step`` tensor, which torch Adam increments in place once per parameter (the bias
correction then runs ahead and the resumed run diverges from the second step on).
``_prefill_optimizer_state`` and ``_load_optimizer`` work around all three with mcore's own pieces
(state pre-filled with zeros and step 0; the parameter state loaded with ``step`` set aside; one
``step`` tensor per parameter, its value from the param groups as mcore intends).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_vrft.checkpoint.atomic import COMPLETE, CheckpointError, atomic_dir, is_complete, is_ours
from megatron_vrft.checkpoint.safe_load import verify_dist_checkpoint, weights_only_loads
from megatron_vrft.models.qwen2_5_vl import weights as W
from megatron_vrft.runtime.collective import agree
from megatron_vrft.trainer.weights_io import (
    CHECKPOINT_ERRORS,
    PretrainedPathError,
    architecture_diff,
    export_hf,
    load_initial_weights,
)

__all__ = [
    "FORMAT", "STATE_FILE", "save_checkpoint", "resume_if_any", "load_checkpoint", "load_model_from_checkpoint",
    "latest_checkpoint", "list_checkpoints", "read_trainer_state", "is_trainer_checkpoint", "rotate_checkpoints",
    "PretrainedPathError", "load_initial_weights", "export_hf",
]

log = logging.getLogger(__name__)

FORMAT = "megatron_vrft/trainer-checkpoint"
VERSION = 1
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_DIR = re.compile(r"^step_(\d+)\.(tmp|old)-(\d+)$")
_SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}
# Crash tests only: "STEP:SECONDS" sleeps in the save of step STEP after every rank wrote its
# shards, before the directory is completed (so a SIGKILL lands "during the write").
_PAUSE_ENV = "MEGATRON_VRFT_TEST_SAVE_PAUSE"


# ---- collective helpers -----------------------------------------------------------------------
def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _broadcast(obj: Any) -> Any:
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---- what a checkpoint holds ------------------------------------------------------------------
def _unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The model inside mcore DDP (its own keys, no ``module.`` prefix)."""
    return getattr(chunk, "module", chunk)


def _model_keys(n: int) -> list[str]:
    return ["model"] if n == 1 else [f"model{i}" for i in range(n)]


def _layout() -> dict[str, int]:
    from megatron.core import parallel_state as ps

    return {"tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size()}


def _rng_state() -> dict[str, Any]:
    """This rank's RNG states as tensors / plain containers (weights-only loadable)."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded(state: Optional[dict]) -> Any:
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    lay = _layout()
    offset = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank())
    return ShardedObject("rng_state", state, (lay["pp"], lay["tp"], lay["dp"]), offset, replica_id=0)


def _sub_optimizers(optimizer: Any) -> list[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _prefill_optimizer_state(optimizer: Any) -> None:
    """Gives an untouched distributed torch-Adam optimizer the state a step would create (zeros and
    step 0), so mcore's ``state_dict()`` finds its one ``step``; loading overwrites all of it."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for sub in _sub_optimizers(optimizer):
        if not isinstance(sub, DistributedOptimizer) or sub.init_state_fn is None:
            continue
        inner = sub.optimizer
        sub.init_state_fn(inner, sub.config)
        for group in inner.param_groups:
            for p in group["params"]:
                inner.state[p].setdefault("step", torch.tensor(0.0))


def _load_optimizer(optimizer: Any, state: Any) -> None:
    """mcore's optimizer load, with the distributed optimizer's parameter state loaded with the torch
    Adam ``step`` set aside (see the module doc)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    subs = _sub_optimizers(optimizer)
    states = [state] if len(subs) == 1 else [v for _, v in sorted(state.items())]
    if len(states) != len(subs):
        raise CheckpointError(f"checkpoint has {len(states)} optimizer(s), this run builds {len(subs)} "
                              "(different frozen modules or dtypes?)")
    for sub, st in zip(subs, states):
        if not isinstance(sub, DistributedOptimizer) or "param_state" not in st:
            sub.load_state_dict(st)
            continue
        st = dict(st)
        param_state, kind = st.pop("param_state"), st.pop("param_state_sharding_type")
        if kind != "fully_reshardable":
            raise CheckpointError(f"distributed-optimizer state of type {kind!r}; this trainer writes fully_reshardable")
        sub.load_state_dict(st)  # param groups (lr, step) and the allocated Adam state
        inner = sub.optimizer
        steps = {p: s.pop("step") for p, s in inner.state.items() if "step" in s}
        try:
            sub.load_parameter_state_from_fully_reshardable(param_state)
        finally:
            # mcore hands every parameter the SAME step tensor; torch Adam increments each
            # parameter's step in place, so a shared one would advance once per parameter per step.
            for p, step in steps.items():
                inner.state[p]["step"] = step.clone()
    if len(subs) > 1:
        optimizer._synchronize_steps()


def _sharded_state(run: Any, *, loading: bool, model_only: bool = False, rng: bool = True) -> dict[str, Any]:
    keys = _model_keys(len(run.model))
    sd: dict[str, Any] = {k: _unwrap(c).sharded_state_dict() for k, c in zip(keys, run.model)}
    if model_only:
        return sd
    if loading:
        _prefill_optimizer_state(run.optimizer)
    sd["optimizer"] = run.optimizer.sharded_state_dict({k: sd[k] for k in keys}, is_loading=loading,
                                                       metadata=_SHARDING)
    sd["scheduler"] = run.scheduler.state_dict()
    sd["data"] = run.train.state_dict() if run.train is not None else None
    sd["step"] = int(run.step)
    sd["consumed_samples"] = int(run.consumed_samples)
    if rng:
        sd["rng"] = _rng_sharded(None if loading else _rng_state())
    return sd


# ---- the checkpoint directory -------------------------------------------------------------------
def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """``trainer_state.json`` of a COMPLETE trainer checkpoint; CheckpointError naming what is wrong."""
    path = Path(path)
    f = path / STATE_FILE
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist")
    if not f.is_file():
        raise CheckpointError(f"{path} is not a megatron_vrft trainer checkpoint (no {STATE_FILE})")
    if not is_complete(path):
        raise CheckpointError(f"trainer checkpoint {path} is incomplete (no {COMPLETE} marker: its save did not finish)")
    try:
        state = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON: {e}") from None
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise CheckpointError(f"{f}: format {state.get('format')} v{state.get('version')}, expected {FORMAT} v{VERSION}")
    return state


def is_trainer_checkpoint(path: str | Path) -> bool:
    """True for a directory this trainer wrote: a ``step_<N>`` directory of ours (``atomic.is_ours``,
    the rule ``atomic_dir(overwrite=True)`` replaces by) holding a ``trainer_state.json`` of this
    trainer's format (complete or not). Rotation deletes nothing else but temp dirs of dead saves."""
    path = Path(path)
    if not (_STEP_DIR.match(path.name) and is_ours(path) and (path / STATE_FILE).is_file()):
        return False
    try:
        return json.loads((path / STATE_FILE).read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def list_checkpoints(save_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the COMPLETE trainer checkpoints under ``save_dir``, oldest first."""
    root = Path(save_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if is_trainer_checkpoint(p) and is_complete(p):
            found.append((int(_STEP_DIR.match(p.name).group(1)), p))
    return sorted(found)


def latest_checkpoint(save_dir: str | Path) -> Optional[Path]:
    found = list_checkpoints(save_dir)
    return found[-1][1] if found else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rotate_checkpoints(save_dir: str | Path, keep_last: int) -> list[Path]:
    """Deletes all but the newest ``keep_last`` complete trainer checkpoints (0 = keep all), and the
    temp dirs of saves whose process is gone (``step_<N>.tmp-<pid>`` left by a crash: ``atomic_dir``
    names them so; its owner file is written only when a save completes). Only directories
    recognisably ours are touched. Returns what was deleted."""
    root = Path(save_dir)
    deleted = []
    complete = list_checkpoints(root)
    if keep_last > 0:
        for _, p in complete[:-keep_last]:
            shutil.rmtree(p)
            deleted.append(p)
    for p in root.iterdir() if root.is_dir() else []:
        m = _TMP_DIR.match(p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(3))):
            shutil.rmtree(p, ignore_errors=True)
            deleted.append(p)
    return deleted


def save_checkpoint(run: Any) -> Path:
    """Collective: writes ``<checkpoint.save_dir>/step_<run.step>/`` (see the module doc); an existing
    directory of that step is replaced only once the new one is complete. Rank 0 then applies
    ``keep_last``. Any rank's failure raises ``CollectiveError`` on every rank."""
    from megatron.core import dist_checkpointing

    cfg = run.cfg.checkpoint
    if not cfg.save_dir:
        raise CheckpointError("checkpoint.save_dir is not set: nowhere to save")
    final = Path(cfg.save_dir).absolute() / f"step_{run.step}"
    rank0 = _rank() == 0
    ctx, tmp = None, None  # ctx: rank 0's entered atomic_dir, until it is completed
    try:
        with agree(f"creating {final}", errors=CHECKPOINT_ERRORS):
            if rank0:
                entering = atomic_dir(final, overwrite=True)
                tmp = str(entering.__enter__())
                ctx = entering
        tmp = _broadcast(tmp)
        with agree(f"writing checkpoint {final}", errors=CHECKPOINT_ERRORS):
            dist_checkpointing.save(_sharded_state(run, loading=False), tmp)
        pause_step, _, pause_s = os.environ.get(_PAUSE_ENV, "").partition(":")
        if pause_step and int(pause_step) == run.step:
            time.sleep(float(pause_s))
        with agree(f"completing checkpoint {final}", errors=CHECKPOINT_ERRORS):
            if rank0:
                state = {"format": FORMAT, "version": VERSION, "step": int(run.step),
                         "consumed_samples": int(run.consumed_samples), **_layout(),
                         "first_stage_layers": run.cfg.model.first_stage_llm_layers,
                         "padded_vocab_size": _unwrap(run.model[0]).mcore_config.padded_vocab_size,
                         "hf_config": W.as_hf_config(run.hf_config).to_dict()}
                (Path(tmp) / STATE_FILE).write_text(json.dumps(state, indent=2, default=str) + "\n")
                ctx.__exit__(None, None, None)
                ctx = None
                rotate_checkpoints(cfg.save_dir, cfg.keep_last)
    except BaseException as e:
        if ctx is not None:
            ctx.__exit__(type(e), e, e.__traceback__)
        raise
    return final


# ---- loading ------------------------------------------------------------------------------------
def _check_compatible(state: dict, run: Any, path: Path) -> None:
    diff = architecture_diff(run.hf_config, state["hf_config"])
    if diff:
        raise CheckpointError(f"{path} holds another architecture than this run's model: {diff}")
    padded = _unwrap(run.model[0]).mcore_config.padded_vocab_size
    if state["padded_vocab_size"] != padded:
        raise CheckpointError(
            f"{path} was saved with the vocabulary padded to {state['padded_vocab_size']} rows (tp={state['tp']}), "
            f"this run pads it to {padded} (tp={_layout()['tp']}): a vocab_size divisible by both TP sizes reshards")


def _load(sd: dict, path: Path) -> dict:
    from megatron.core import dist_checkpointing

    verify_dist_checkpoint(path)
    try:
        with weights_only_loads():
            return dist_checkpointing.load(sd, str(path))
    except CHECKPOINT_ERRORS as e:
        # torch's weights-only unpickler refused an object inside a .distcp file (DCP collects the
        # per-rank exceptions in CheckpointException.failures)
        causes = [e, *(exc for exc, _ in getattr(e, "failures", {}).values())]
        if any(isinstance(c, pickle.UnpicklingError) for c in causes):
            raise CheckpointError(f"refusing to load {path}: an object stored in it is not plain data "
                                  "(a pickle that would run code); nothing was executed") from None
        raise


def _load_models(run_model: list, loaded: dict) -> None:
    for key, chunk in zip(_model_keys(len(run_model)), run_model):
        _unwrap(chunk).load_state_dict(loaded[key], strict=True)


def load_checkpoint(run: Any, path: str | Path) -> None:
    """Collective: restores model, optimizer, scheduler, data position, step (and RNG at the saved
    layout) from the trainer checkpoint ``path``; moves ``run.metrics`` back to that step."""
    path = Path(path)
    state: dict = {}
    with agree(f"reading {path}", errors=CHECKPOINT_ERRORS):
        state = read_trainer_state(path)
        _check_compatible(state, run, path)
    same_layout = all(state[k] == v for k, v in _layout().items())
    with agree(f"loading {path}", errors=CHECKPOINT_ERRORS):
        loaded = _load(_sharded_state(run, loading=True, rng=same_layout), path)
        _load_models(run.model, loaded)
        _load_optimizer(run.optimizer, loaded["optimizer"])
        run.scheduler.load_state_dict(loaded["scheduler"])
        if run.train is not None and loaded["data"] is not None:
            run.train.load_state_dict(loaded["data"])
        run.step, run.consumed_samples = int(loaded["step"]), int(loaded["consumed_samples"])
        if same_layout:
            _set_rng_state(loaded["rng"])
    if not same_layout and _rank() == 0:
        log.warning("resumed %s saved at %s on tp=%d pp=%d dp=%d: model and optimizer resharded; RNG states "
                    "keep this run's seeding", path, {k: state[k] for k in ("tp", "pp", "dp")}, *_layout().values())
    if getattr(run, "metrics", None) is not None:
        run.metrics.rewind(run.step)


def load_model_from_checkpoint(model_chunks: list, path: str | Path) -> None:
    """Collective: only the model part of trainer checkpoint ``path`` (any TP/PP) into ``model_chunks``."""
    loaded = _load({k: _unwrap(c).sharded_state_dict() for k, c in zip(_model_keys(len(model_chunks)), model_chunks)},
                   Path(path))
    _load_models(model_chunks, loaded)


def resume_if_any(run: Any) -> bool:
    """Collective: loads the newest complete checkpoint under ``checkpoint.save_dir`` when
    ``checkpoint.resume`` is on and one exists (rank 0 picks it; all ranks load the same)."""
    cfg = run.cfg.checkpoint
    if not cfg.save_dir or not cfg.resume:
        return False
    latest = _broadcast(str(latest_checkpoint(cfg.save_dir) or "") if _rank() == 0 else None)
    if not latest:
        return False
    load_checkpoint(run, latest)
    if _rank() == 0:
        log.info("resumed from %s (step %d)", latest, run.step)
    return True

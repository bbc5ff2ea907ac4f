"""Where a run's weights come from and where they go: initial weights and the HF export.

Initial weights, first match wins (``load_initial_weights``, before DDP and the optimizer are built):

1. ``checkpoint.pretrained_path`` (an earlier stage): a trainer checkpoint ``step_<N>/``, a
   ``checkpoint.save_dir`` (its newest complete ``step_<N>``), an HF Qwen2.5-VL directory (e.g.
   LoRA-merged) or a converted mcore checkpoint (``checkpoint_convert/hf_to_mcore.py``);
2. ``model.mcore_path`` (converted mcore checkpoint, any TP/PP);
3. ``model.hf_path`` (through the weight map, no offline conversion).

A path that is set but missing, incomplete, or of another architecture/shape raises
``PretrainedPathError`` (a ``ConfigError``: the entry scripts print its one line and exit 2) before
any weight is copied and before anything is written; never a silent fallback to the base model.

``export_hf(run, out_dir)``: the model gathered over TP/PP through the weight map, written by rank 0
as ``config.json`` + safetensors in the released key layout + the tokenizer / processor files of
``run.processor_dir``; atomic (a crash leaves no half-written ``hf/``).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.distributed.checkpoint.api import CheckpointException

from megatron_vrft.checkpoint.atomic import CheckpointError, atomic_dir
from megatron_vrft.config import ConfigError
from megatron_vrft.models.qwen2_5_vl import weights as W
from megatron_vrft.runtime.collective import CollectiveError, agree

__all__ = ["CHECKPOINT_ERRORS", "PretrainedPathError", "architecture_diff", "resolve_initial_weights",
           "load_initial_weights", "export_hf"]


# What the trainer's ``collective.agree`` blocks agree on: torch DCP raises CheckpointException, a
# BaseException, on every rank of a failed save/load.
CHECKPOINT_ERRORS = (Exception, CheckpointException)


class PretrainedPathError(ConfigError):
    """A weights path that is set but unusable; the message is one line naming the key and path."""


@contextmanager
def _agree_on_path(what: str) -> Iterator[None]:
    """``collective.agree`` over the world, where a ``PretrainedPathError`` of the first failing rank
    is raised as one on every rank (its one line: the entry scripts print it and exit 2)."""
    try:
        with agree(what, errors=CHECKPOINT_ERRORS):
            yield
    except CollectiveError as e:
        if e.error_type == PretrainedPathError.__name__:
            raise PretrainedPathError(e.message) from e
        raise


def architecture_diff(mine: Any, theirs: Any) -> str:
    """The first few sizes in which HF config ``theirs`` differs from ``mine`` ("" when none)."""
    a, b = W.model_dims(mine), W.model_dims(theirs)
    diff = [f"{k} {getattr(b, k)} (run: {getattr(a, k)})" for k in a.__dataclass_fields__ if getattr(a, k) != getattr(b, k)]
    return ", ".join(diff[:4])


def resolve_initial_weights(cfg: Any, hf_config: Any) -> tuple[str, str, Path]:
    """``(config key, kind, path)`` of the weights ``load_initial_weights`` would load; kind is
    ``trainer`` / ``hf`` / ``mcore``. Validates the path (exists, complete, same architecture and
    shapes as ``hf_config``) reading only metadata; raises PretrainedPathError."""
    from megatron_vrft.checkpoint.hf_io import HFCheckpoint
    from megatron_vrft.checkpoint.mcore_io import METADATA, McoreCheckpoint
    from megatron_vrft.trainer.checkpoint import STATE_FILE, latest_checkpoint, read_trainer_state

    for key, value, kinds in (("checkpoint.pretrained_path", cfg.checkpoint.pretrained_path, ("trainer", "hf", "mcore")),
                              ("model.mcore_path", cfg.model.mcore_path, ("mcore",)),
                              ("model.hf_path", cfg.model.hf_path, ("hf",))):
        if value is None:
            continue
        path = Path(value)
        where = f"{key}={value}"
        try:
            if not path.exists():
                raise CheckpointError("does not exist")
            if not path.is_dir():
                raise CheckpointError("is not a directory")
            if "trainer" in kinds and not (path / STATE_FILE).is_file() and any(path.glob("step_*")):
                latest = latest_checkpoint(path)
                if latest is None:
                    raise CheckpointError("holds step_* directories but no complete trainer checkpoint")
                path = latest
            if "trainer" in kinds and (path / STATE_FILE).is_file():
                kind, theirs = "trainer", read_trainer_state(path)["hf_config"]
            elif "mcore" in kinds and (path / METADATA).is_file():
                kind, theirs = "mcore", McoreCheckpoint(path).config
            elif "hf" in kinds and (path / "config.json").is_file():
                ck = HFCheckpoint(path)  # checks names, shard files and every shape against its config
                kind, theirs = "hf", ck.config
                ck.close()
            else:
                wanted = {"trainer": f"a trainer checkpoint ({STATE_FILE})", "hf": "an HF directory (config.json)",
                          "mcore": f"a converted mcore checkpoint ({METADATA})"}
                raise CheckpointError("is not " + " or ".join(wanted[k] for k in kinds))
            diff = architecture_diff(hf_config, theirs)
            if diff:
                raise CheckpointError(f"holds another architecture than the run's model: {diff}")
        except (CheckpointError, W.WeightMapError, OSError, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PretrainedPathError(f"{where}: {msg}") from None
        return key, kind, path
    raise PretrainedPathError("no initial weights: set model.hf_path, model.mcore_path or checkpoint.pretrained_path")


def load_initial_weights(cfg: Any, model_chunks: list, hf_config: Any) -> str:
    """Collective: loads this rank's share of the initial weights into ``model_chunks`` (plain or
    DDP-wrapped ``Qwen25VLModel``s); returns one line saying what was loaded.

    Call it before building the optimizer: a mixed-precision optimizer copies the model's weights
    into its fp32 main parameters when built (or call ``optimizer.reload_model_params()`` after).
    """
    from megatron_vrft.checkpoint.hf_io import HFCheckpoint
    from megatron_vrft.checkpoint.mcore_io import load_mcore_checkpoint
    from megatron_vrft.models.qwen2_5_vl import live
    from megatron_vrft.trainer.checkpoint import load_model_from_checkpoint

    with _agree_on_path("checking the initial weights"):
        key, kind, path = resolve_initial_weights(cfg, hf_config)
    if len(model_chunks) != 1 and kind != "trainer":
        raise PretrainedPathError(f"{key}={path}: {kind} weights load into one model chunk per rank "
                                  f"(virtual pipeline stages are not supported), got {len(model_chunks)}")
    fsl = cfg.model.first_stage_llm_layers
    with _agree_on_path(f"loading the initial weights from {path}"):
        try:
            if kind == "trainer":
                load_model_from_checkpoint(model_chunks, path)
            elif kind == "mcore":
                load_mcore_checkpoint(getattr(model_chunks[0], "module", model_chunks[0]), path,
                                      first_stage_layers=fsl)
            else:
                ck = HFCheckpoint(path)
                live.load_into_model(getattr(model_chunks[0], "module", model_chunks[0]), ck.get, hf_config,
                                     first_stage_layers=fsl)
                ck.close()
        except CHECKPOINT_ERRORS as e:  # noqa: BLE001 - named by path, shared with every rank
            raise PretrainedPathError(f"{key}={path}: cannot load its {kind} weights: {str(e).splitlines()[0]}") from e
    return f"{kind} weights from {path} ({key})"


def _export_plan(hf_config: Any, pp: int, first_stage_layers: int | None, dtype: torch.dtype) -> list:
    """TensorSpecs in the order ``live.export_hf_state`` yields them."""
    from megatron_vrft.checkpoint.stream import TensorSpec

    d = W.model_dims(hf_config)
    return [TensorSpec(name, dtype, W.hf_shape(inst.param, j, d))
            for inst in W.instances(d, pp, first_stage_layers) if inst.export for j, name in enumerate(inst.hf)]


def _in_plan_order(plan: list, tensors: Any):
    for spec, (name, t) in zip(plan, tensors):
        if name != spec.name:
            raise CheckpointError(f"export yielded {name} where the plan has {spec.name}")
        yield name, t.to("cpu", spec.dtype)


def export_hf(run: Any, out_dir: str | Path) -> Path:
    """Collective: writes ``out_dir`` (replacing an earlier export) as an HF Qwen2.5-VL directory
    loadable by ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` and vLLM; returns it."""
    import torch.distributed as dist

    from megatron_vrft.checkpoint.hf_io import copy_hf_side_files, write_hf_checkpoint
    from megatron_vrft.models.qwen2_5_vl import live

    if len(run.model) != 1:
        raise CheckpointError("HF export supports one model chunk per rank (no virtual pipeline stages)")
    model = getattr(run.model[0], "module", run.model[0])
    hf_config = W.as_hf_config(run.hf_config)
    fsl = run.cfg.model.first_stage_llm_layers
    dtype = next(model.parameters()).dtype
    _, _, _, pp = live.parallel_ranks()
    out = Path(out_dir)
    tensors = live.export_hf_state(model, hf_config, first_stage_layers=fsl)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    with agree(f"HF export to {out}", errors=CHECKPOINT_ERRORS):
        try:
            if rank0:
                with atomic_dir(out, overwrite=True, marker=False) as tmp:
                    if run.processor_dir:
                        copy_hf_side_files(Path(run.processor_dir), tmp)
                    plan = _export_plan(hf_config, pp, fsl, dtype)
                    write_hf_checkpoint(tmp, plan, _in_plan_order(plan, tensors))
                    exported = hf_config.to_dict()
                    exported["dtype"] = str(dtype).removeprefix("torch.")
                    exported["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
                    (tmp / "config.json").write_text(json.dumps(exported, indent=2, sort_keys=True) + "\n")
        finally:
            for _ in tensors:  # the other ranks take part in every gather (rank 0 consumed them above)
                pass
    return out

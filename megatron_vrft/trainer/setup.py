"""``build(cfg) -> Run``: everything a training run holds, built in one ordered place.

    distributed + mcore parallel state -> HF config + tokenizer -> Qwen25VLModel (this rank's stage)
    -> initial weights (model.hf_path / model.mcore_path / checkpoint.pretrained_path)
    -> freezing (before DDP: frozen params get no grad buffer) -> mcore DDP -> optimizer (+ per-module
    LRs) -> LR schedule -> data streams (decoded once per DP replica) -> metrics
    -> mode grpo: prompt stream instead of the SFT stream, rollout engine, reference model, first
       weight sync (`trainer.grpo_setup`)

The model config sets ``calculate_per_token_loss`` (global-count loss normalisation, see
`trainer.step`) and ``finalize_model_grads_func`` (without it mcore's schedule never all-reduces
DP gradients); recomputation follows ``model.recompute``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from megatron_vrft.config import ConfigError, RunConfig
from megatron_vrft.runtime import DistInfo, init_distributed

__all__ = ["Run", "build", "build_model", "media_options", "param_dtype", "recompute_options"]


@dataclass
class Run:
    cfg: RunConfig
    dist: DistInfo
    hf_config: Any
    tokenizer: Any
    processor_dir: Optional[str]
    model: list            # mcore DDP-wrapped Qwen25VLModel chunks (a list, as mcore schedules want)
    optimizer: Any         # MegatronOptimizer
    scheduler: Any         # OptimizerParamScheduler
    train: Any             # trainer.data.StepStream
    eval: Any              # trainer.data.StepStream over data.eval_path, or None
    metrics: Any           # trainer.metrics.MetricsLogger
    timers: Any            # trainer.metrics.Timers
    guard: Any             # trainer.metrics.NonFiniteGuard
    total_steps: int = 0   # optimizer steps the LR schedule spans (the loop stops there)
    eval_interval: int = 0
    weights_from: str = ""  # where the initial weights came from (one line)
    step: int = 0           # optimizer steps done
    consumed_samples: int = 0
    grpo: Any = None        # trainer.grpo_setup.GRPOParts (engine, reference model, weight sync) in mode grpo


def param_dtype(name: str) -> torch.dtype:
    """``model.dtype`` -> torch dtype (auto: bf16 on GPU, fp32 on CPU)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def recompute_options(mode: str) -> dict:
    """``model.recompute`` -> mcore TransformerConfig fields of the LLM."""
    if mode == "none":
        return {}
    if mode == "selective":
        return {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}


def _hf_config(cfg: RunConfig):
    from megatron_vrft.checkpoint.hf_io import read_hf_config
    from megatron_vrft.checkpoint.mcore_io import McoreCheckpoint

    if cfg.model.hf_path is not None:
        return read_hf_config(cfg.model.hf_path)[1]
    return McoreCheckpoint(cfg.model.mcore_path).config


def _tokenizer(cfg: RunConfig):
    from transformers import AutoTokenizer

    if cfg.model.hf_path is None:
        raise ConfigError("model.hf_path: needed for the tokenizer (a converted mcore checkpoint has none)")
    return AutoTokenizer.from_pretrained(cfg.model.hf_path)


def build_model(cfg: RunConfig, hf_config, dtype: torch.dtype):
    """This rank's stage of the Qwen25VLModel ``cfg.model`` describes (weights not loaded yet)."""
    from megatron_vrft.models.qwen2_5_vl.model import Qwen25VLModel
    from megatron_vrft.runtime import fastpaths

    fastpaths.apply()  # exact: THD RoPE without a host sync per packed sequence and layer
    return Qwen25VLModel(
        hf_config,
        first_stage_layers=cfg.model.first_stage_llm_layers,
        params_dtype=dtype,
        sequence_parallel=cfg.parallel.sequence_parallel,
        # THD rows differ in length between micro-batches: PP must exchange shapes per micro-batch.
        variable_seq_lengths=cfg.parallel.pp > 1,
        # Weights are loaded afterwards, but init must run: with perform_initialization=False mcore
        # 0.16.1's Column/RowParallelLinear never mark their weights tensor-parallel, so the grad
        # norm counts TP shards from TP rank 0 only (clipping and logged norms wrong at TP > 1).
        perform_initialization=True,
        calculate_per_token_loss=True,
        **recompute_options(cfg.model.recompute),
    )


def _wrap_ddp(model, cfg: RunConfig):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    ddp = DistributedDataParallel(model.config, ddp_cfg, model)
    # The schedule all-reduces DP grads (and PP-tied embeddings) only through this hook.
    model.config.finalize_model_grads_func = finalize_model_grads
    model.config.no_sync_func = ddp.no_sync
    return ddp


def media_options(v) -> tuple[dict, dict]:
    """``data.video`` -> (video, image) sampling options for `load_samples`: only the keys that are
    set, so unset ones fall back to the dataset format's own defaults."""
    video = {k: getattr(v, k) for k in ("fps", "nframes", "min_pixels", "max_pixels", "total_pixels", "max_frames")
             if getattr(v, k) is not None}
    image = {k: val for k, val in (("min_pixels", v.image_min_pixels), ("max_pixels", v.image_max_pixels))
             if val is not None}
    return video, image


def _stream(cfg: RunConfig, path: str, tokenizer, hf_config, replica, *, train: bool):
    from megatron_vrft.data import load_samples
    from megatron_vrft.data.loader import SampleDataset
    from megatron_vrft.data.template import VisionTokenIds
    from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig
    from megatron_vrft.trainer.data import SFTItems, StepStream

    d = cfg.data
    video, image = media_options(d.video)
    options = dict(d.options)
    if d.system_prompt is not None:
        options["system_prompt"] = d.system_prompt
    samples, _ = load_samples(path, d.format, d.media_root, mode="sft", video_options=video,
                              image_options=image, **options)
    dataset = SFTItems(SampleDataset(samples, tokenizer, RopeIndexConfig.from_hf_config(hf_config), task="sft",
                                     max_length=d.max_seq_len), param_dtype(cfg.model.dtype))
    pad = VisionTokenIds.from_tokenizer(tokenizer).pad
    return StepStream(dataset, replica, local_batch=d.global_batch_size // replica.dp_size,
                      epochs=cfg.sft.epochs if train else 1, seed=cfg.seed, shuffle=d.shuffle and train,
                      micro_batch_size=d.micro_batch_size, pack_tokens=d.pack_tokens, pad_id=pad,
                      pad_to_multiple_of=cfg.parallel.tp if cfg.parallel.sequence_parallel else 1,
                      num_workers=d.num_workers, prefetch_factor=d.prefetch_factor,
                      allow_partial=not train, name="train" if train else "eval")


def _total_steps(cfg: RunConfig, stream) -> int:
    if cfg.sft.max_steps > 0:
        return cfg.sft.max_steps
    per_epoch = len(stream.sampler.order(0)) // stream.local_batch
    if per_epoch == 0:
        raise ConfigError(f"data.global_batch_size: {cfg.data.global_batch_size} is more than the "
                          f"{stream.sampler.num_samples} training samples")
    return cfg.sft.epochs * per_epoch


def build(cfg: RunConfig) -> Run:
    """Builds the run for ``cfg`` on this rank (collective: every rank of the job calls it)."""
    from megatron_vrft.trainer.checkpoint import load_initial_weights
    from megatron_vrft.trainer.data import replica_layout
    from megatron_vrft.trainer.metrics import MetricsLogger, NonFiniteGuard, Timers
    from megatron_vrft.trainer.optim import build_optimizer, build_scheduler, freeze_modules

    p = cfg.parallel
    if cfg.mode == "grpo":
        from megatron_vrft.trainer import grpo_setup

        grpo_setup.check(cfg)
    dist_info = init_distributed(p.tp, p.pp, p.cp, seed=cfg.seed)
    hf_config = _hf_config(cfg)
    tokenizer = _tokenizer(cfg)
    dtype = param_dtype(cfg.model.dtype)
    model = build_model(cfg, hf_config, dtype)
    weights_from = load_initial_weights(cfg, [model], hf_config)
    freeze_modules(model, cfg.model)
    ddp = _wrap_ddp(model, cfg)
    optimizer = build_optimizer(cfg.optimizer, [ddp], bf16=dtype == torch.bfloat16,
                                use_distributed_optimizer=p.use_distributed_optimizer)
    replica = replica_layout()
    if cfg.mode == "grpo":
        train, evals = grpo_setup.prompt_stream(cfg, tokenizer, hf_config, replica), None
        total = grpo_setup.total_steps(cfg, train)
    else:
        train = _stream(cfg, cfg.data.train_path, tokenizer, hf_config, replica, train=True)
        evals = _stream(cfg, cfg.data.eval_path, tokenizer, hf_config, replica, train=False) if cfg.data.eval_path else None
        total = _total_steps(cfg, train)
    run = Run(
        cfg=cfg, dist=dist_info, hf_config=hf_config, tokenizer=tokenizer, processor_dir=cfg.model.hf_path,
        model=[ddp], optimizer=optimizer, scheduler=build_scheduler(cfg.optimizer, optimizer, total),
        train=train, eval=evals,
        metrics=MetricsLogger(cfg.logging, rank=dist_info.rank, total_steps=total, run_config=cfg),
        timers=Timers(), guard=NonFiniteGuard(cfg.sft.max_nonfinite_steps), total_steps=total,
        eval_interval=cfg.sft.eval_interval, weights_from=weights_from,
    )
    if cfg.mode == "grpo":
        run.grpo = grpo_setup.build_grpo(cfg, run.model, hf_config, tokenizer, dtype)
    return run

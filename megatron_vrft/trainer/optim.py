"""Which parameters train and how fast: module groups, freezing, the mcore optimizer and LR schedule.

Qwen2.5-VL has three trainable modules (seed 000 gives each its own peak LR):

    vision  the ViT: ``vision_model.patch_embed`` + ``vision_model.decoder.layers``
    merger  the patch merger: ``vision_model.decoder.final_layernorm`` (HF ``merger.ln_q``) +
            ``vision_model.projection`` (HF ``merger.mlp``)
    llm     everything under ``language_model`` (embeddings, decoder, output layer)

Freezing sets ``requires_grad=False`` BEFORE the DDP wrap, so frozen parameters get no gradient
buffer in DDP's buckets (nothing all-reduced) and no optimizer state (mcore's param groups skip
them). Per-module LRs are mcore ``config_overrides`` (``max_lr``/``min_lr`` per param group), which
``OptimizerParamScheduler`` follows group by group through warmup and decay.
"""

from __future__ import annotations

import torch

from megatron_vrft.config import ModelConfig, OptimizerConfig

__all__ = ["MODULES", "module_of", "freeze_modules", "build_optimizer", "build_scheduler", "group_lrs", "current_lrs"]

MODULES = ("vision", "merger", "llm")
_MERGER_PREFIXES = ("vision_model.decoder.final_layernorm.", "vision_model.projection.")


def module_of(name: str) -> str:
    """``"vision" | "merger" | "llm"`` for a parameter name (DDP's ``module.`` prefix allowed)."""
    name = name.removeprefix("module.")
    if name.startswith(_MERGER_PREFIXES):
        return "merger"
    if name.startswith("vision_model."):
        return "vision"
    if name.startswith("language_model."):
        return "llm"
    raise ValueError(f"parameter {name} belongs to no known module of Qwen25VLModel")


def freeze_modules(model: torch.nn.Module, cfg: ModelConfig) -> dict[str, int]:
    """Sets ``requires_grad=False`` on the frozen modules; returns trainable parameter counts per module.

    Must run before the DDP wrap. Freezing everything is an error (nothing would train).
    """
    frozen = {"vision": cfg.freeze_vision, "merger": cfg.freeze_projector, "llm": cfg.freeze_llm}
    if all(frozen.values()):
        raise ValueError("model.freeze_vision, freeze_projector and freeze_llm are all true: nothing to train")
    counts = dict.fromkeys(MODULES, 0)
    for name, p in model.named_parameters():
        module = module_of(name)
        p.requires_grad_(not frozen[module])
        if p.requires_grad:
            counts[module] += p.numel()
    return counts


def group_lrs(cfg: OptimizerConfig) -> dict[str, float]:
    """Peak LR per module (None in the config = ``optimizer.lr``)."""
    return {"vision": cfg.vision_lr if cfg.vision_lr is not None else cfg.lr,
            "merger": cfg.merger_lr if cfg.merger_lr is not None else cfg.lr,
            "llm": cfg.lr}


def build_optimizer(cfg: OptimizerConfig, model_chunks: list, *, bf16: bool, use_distributed_optimizer: bool):
    """mcore ``get_megatron_optimizer`` with one LR override per module whose LR differs from ``lr``."""
    from megatron.core.optimizer import (
        OptimizerConfig as McoreOptimizerConfig,
        ParamKey,
        ParamWithNamePredicate,
        get_megatron_optimizer,
        get_standard_config_overrides,
    )

    mcfg = McoreOptimizerConfig(
        optimizer=cfg.name,
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    # The standard overrides (no weight decay on biases and norms) are kept next to ours.
    overrides = get_standard_config_overrides(mcfg)
    for module, lr in group_lrs(cfg).items():
        if module == "llm" or lr == cfg.lr:
            continue
        pred = ParamWithNamePredicate(name=f"module_{module}", fn=lambda p, n, m=module: module_of(n) == m)
        overrides[ParamKey(with_name_predicate=pred)] = {"max_lr": lr, "min_lr": min(cfg.min_lr, lr)}
    return get_megatron_optimizer(mcfg, model_chunks, config_overrides=overrides)


def build_scheduler(cfg: OptimizerConfig, optimizer, total_steps: int):
    """Linear warmup from 0 then constant / linear / cosine decay to ``min_lr`` at ``total_steps``."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_ratio * total_steps)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=max(total_steps, warmup + 1),
        lr_decay_style=cfg.lr_schedule,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant",
    )


def current_lrs(cfg: OptimizerConfig, optimizer) -> dict[str, float]:
    """LR of each module now. Groups are told apart by their peak ``max_lr`` (the schedule is a
    function of max_lr and min_lr alone, so groups sharing a peak share the LR)."""
    lrs = {}
    for module, peak in group_lrs(cfg).items():
        lr = next((g["lr"] for g in optimizer.param_groups if g["max_lr"] == peak and g["params"]), None)
        if lr is not None:
            lrs[module] = lr
    return lrs

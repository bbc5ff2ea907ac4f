"""The GRPO parts of a run, built by ``trainer.setup.build`` when ``mode: grpo``.

    prompt stream (decoded once per DP replica, `trainer.grpo_data.PromptStream`)
    -> rollout engine on every rank (``rollout.engine``: vllm | hf; only each replica's leader generates)
    -> frozen reference model (only when ``grpo.kl_beta > 0``; the initial weights, never trained)
    -> weight sync into the engine (`rollout.sync.WeightSync`), run once here so the engine starts
       from the trainer's exact weights (whatever ``model.hf_path`` / ``mcore_path`` /
       ``checkpoint.pretrained_path`` they came from); frozen parameters are sent only this once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from megatron_vrft.config import ConfigError, RunConfig

__all__ = ["GRPOParts", "check", "prompt_stream", "total_steps", "build_grpo"]


@dataclass
class GRPOParts:
    """engine: this rank's rollout engine; reference: the frozen reference model chunk (None when
    ``kl_beta == 0``); weight_sync: `WeightSync` into the engine; pad_id: the packing pad token;
    synced_step: the ``run.step`` whose weights the engine holds (a resume loads newer ones: the
    step then syncs before it samples)."""

    engine: Any
    reference: Optional[torch.nn.Module]
    weight_sync: Any
    pad_id: int
    synced_step: int = 0


def prompt_stream(cfg: RunConfig, tokenizer, hf_config, replica):
    """The GRPO prompt stream over ``data.train_path`` (prompts of ``grpo.prompts_per_step / dp`` per rank)."""
    from megatron_vrft.data import load_samples
    from megatron_vrft.data.loader import SampleDataset
    from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig
    from megatron_vrft.trainer.grpo_data import PromptStream
    from megatron_vrft.trainer.setup import media_options

    d = cfg.data
    video, image = media_options(cfg.data.video)
    options = dict(d.options)
    if d.system_prompt is not None:
        options["system_prompt"] = d.system_prompt
    samples, _ = load_samples(d.train_path, d.format, d.media_root, mode="grpo", video_options=video,
                              image_options=image, **options)
    dataset = SampleDataset(samples, tokenizer, RopeIndexConfig.from_hf_config(hf_config), task="grpo",
                            max_length=d.max_seq_len - cfg.rollout.max_new_tokens)
    return PromptStream(dataset, replica, local_batch=cfg.grpo.prompts_per_step // replica.dp_size,
                        epochs=cfg.grpo.epochs, seed=cfg.seed, shuffle=d.shuffle, num_workers=d.num_workers,
                        prefetch_factor=d.prefetch_factor)


def total_steps(cfg: RunConfig, stream) -> int:
    if cfg.grpo.max_steps > 0:
        return cfg.grpo.max_steps
    per_epoch = stream.steps_per_epoch()
    if per_epoch == 0:
        raise ConfigError(f"grpo.prompts_per_step: {cfg.grpo.prompts_per_step} is more than the "
                          f"{stream.sampler.num_samples} training prompts")
    return cfg.grpo.epochs * per_epoch


def check(cfg: RunConfig) -> None:
    """GRPO settings the step cannot run: refused before anything is built, not ignored."""
    if cfg.rollout.tensor_parallel_size != 1:
        raise ConfigError("rollout.tensor_parallel_size: the GRPO step generates on each replica's leader only; "
                          "vLLM tensor parallelism across ranks is not wired into it yet (use 1)")
    if cfg.data.max_seq_len <= cfg.rollout.max_new_tokens:
        raise ConfigError(f"data.max_seq_len: {cfg.data.max_seq_len} leaves no room for prompts next to "
                          f"rollout.max_new_tokens = {cfg.rollout.max_new_tokens}")
    if cfg.rollout.max_model_len < cfg.data.max_seq_len:
        raise ConfigError(f"rollout.max_model_len: {cfg.rollout.max_model_len} is less than data.max_seq_len = "
                          f"{cfg.data.max_seq_len}: the engine could not hold a full-length prompt + completion")
    if cfg.data.pack_tokens and cfg.data.pack_tokens < cfg.data.max_seq_len:
        raise ConfigError(f"data.pack_tokens: {cfg.data.pack_tokens} is less than data.max_seq_len = "
                          f"{cfg.data.max_seq_len}: a full-length prompt + completion could not be packed")


def _reference(cfg: RunConfig, hf_config, dtype):
    from megatron_vrft.trainer.checkpoint import load_initial_weights
    from megatron_vrft.trainer.setup import build_model

    ref = build_model(cfg, hf_config, dtype)
    load_initial_weights(cfg, [ref], hf_config)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref.eval()


def build_grpo(cfg: RunConfig, model_chunks, hf_config, tokenizer, dtype) -> GRPOParts:
    """Engine, reference model and the first (full) weight sync; collective on every rank."""
    from megatron_vrft.data.template import VisionTokenIds
    from megatron_vrft.rollout.base import make_engine
    from megatron_vrft.rollout.sync import WeightSync

    engine = make_engine(cfg, hf_config, cfg.model.hf_path, tokenizer=tokenizer, dtype=dtype)
    reference = _reference(cfg, hf_config, dtype) if cfg.grpo.kl_beta > 0 else None
    sync = WeightSync(hf_config, engine, bucket_mb=cfg.rollout.weight_sync_bucket_mb,
                      first_stage_layers=cfg.model.first_stage_llm_layers)
    sync(model_chunks)
    return GRPOParts(engine, reference, sync, VisionTokenIds.from_tokenizer(tokenizer).pad)

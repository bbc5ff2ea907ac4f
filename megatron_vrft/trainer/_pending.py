"""Stand-ins for H2b's trainer.checkpoint / trainer.eval until they land (then this file goes)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

try:
    from megatron_vrft.trainer.checkpoint import export_hf, load_initial_weights, resume_if_any, save_checkpoint
except ImportError:
    def load_initial_weights(cfg, model_chunks, hf_config) -> str:
        from megatron_vrft.checkpoint.hf_io import HFCheckpoint
        from megatron_vrft.checkpoint.mcore_io import load_mcore_checkpoint
        from megatron_vrft.models.qwen2_5_vl.live import load_into_model

        for chunk in model_chunks:
            if cfg.model.mcore_path is not None:
                load_mcore_checkpoint(chunk, cfg.model.mcore_path, first_stage_layers=cfg.model.first_stage_llm_layers)
            else:
                ck = HFCheckpoint(cfg.model.hf_path)
                load_into_model(chunk, ck.get, hf_config, first_stage_layers=cfg.model.first_stage_llm_layers)
                ck.close()
        return cfg.model.mcore_path or cfg.model.hf_path

    def resume_if_any(run) -> bool:
        return False

    def save_checkpoint(run):
        logger.warning("checkpoint saving not available yet (trainer.checkpoint pending)")

    def export_hf(run, out_dir):
        logger.warning("HF export not available yet (trainer.checkpoint pending)")

try:
    from megatron_vrft.trainer.eval import evaluate
except ImportError:
    def evaluate(run) -> dict:
        return {}

__all__ = ["load_initial_weights", "resume_if_any", "save_checkpoint", "export_hf", "evaluate"]

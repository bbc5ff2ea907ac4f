"""Shared fixtures of the rollout tests: a tiny vLLM-loadable model directory, GRPO prompts through
the real data path (text, image, video, clipped video) and an HF engine on that model."""

import pytest

from megatron_vrft.data.testing import build_tiny_tokenizer
from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig
from megatron_vrft.testing.rollout_prompts import tiny_prompt_items
from megatron_vrft.testing.tiny_qwen import save_tiny_rollout_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_rollout_model")
    save_tiny_rollout_dir(d, seed=0)
    return str(d)


@pytest.fixture(scope="session")
def hf_config(model_dir):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def prompts(tmp_path_factory, hf_config):
    """name -> LoadedItem (see testing.rollout_prompts)."""
    return tiny_prompt_items(tmp_path_factory.mktemp("rollout_prompts"), build_tiny_tokenizer(),
                             RopeIndexConfig.from_hf_config(hf_config))


@pytest.fixture(scope="module")
def hf_engine(model_dir, hf_config):
    import torch

    from megatron_vrft.rollout.hf import HFEngine

    return HFEngine.from_pretrained(model_dir, hf_config, dtype=torch.float32)

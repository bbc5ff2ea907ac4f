"""The grpo section: checks at load, and the shipped GRPO recipes carry their seeds' values."""

from pathlib import Path

import pytest

from megatron_vrft.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def test_recipes_carry_the_seed_values():
    rbft = load_config(str(CONFIGS / "rbft_grpo.yaml"), world_size=8)  # seed 000
    assert (rbft.grpo.num_generations, rbft.grpo.kl_beta, rbft.optimizer.lr, rbft.rollout.max_new_tokens,
            rbft.grpo.epochs) == (2, 0.04, 1e-6, 256, 10)
    assert [(r.name, r.weight) for r in rbft.grpo.rewards] == [("accuracy", 1.0), ("format", 1.0)]
    rarft = load_config(str(CONFIGS / "rarft_grpo.yaml"), world_size=8)  # seed 001
    assert (rarft.grpo.num_generations, rarft.grpo.kl_beta, rarft.optimizer.lr, rarft.rollout.max_new_tokens,
            rarft.rollout.temperature, rarft.optimizer.clip_grad) == (4, 0.05, 5e-7, 512, 1.0, 1.0)
    assert rarft.model.freeze_vision and not rarft.model.freeze_projector
    assert [r.name for r in rarft.grpo.rewards] == ["format_v2", "refuse_iou", "explain_correction"]
    r2 = load_config(str(CONFIGS / "video_r2_grpo.yaml"), world_size=2)  # seed 003
    assert (r2.grpo.num_generations, r2.grpo.kl_beta, r2.optimizer.lr, r2.rollout.max_new_tokens) == (8, 0.04, 1e-6, 1024)
    tar = [r for r in r2.grpo.rewards if r.name == "tar"][0]
    assert tar.options["buffer_seconds"] == 2.0 and tar.options["similarity_threshold"] == 0.75


@pytest.mark.parametrize(
    "override, world, expected",
    [
        ("grpo.prompts_per_step=1", 8, r"grpo.prompts_per_step: 1 prompts do not split evenly over 4 data-parallel"),
        ("grpo.advantage_eps=0", 2, r"grpo.advantage_eps: must be > 0"),
        ("grpo.updates_per_rollout=0", 2, r"grpo.updates_per_rollout: must be >= 1"),
        ("grpo.loss_agg=mean", 2, r"grpo.loss_agg: 'mean' is not one of"),
    ],
)
def test_grpo_checks(override, world, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(str(CONFIGS / "rarft_grpo.yaml"), [override], world_size=world)

"""megatron_vrft: video reinforcement fine-tuning of Qwen2.5-VL on Megatron-Core (SFT and GRPO)."""

__version__ = "0.1.0"

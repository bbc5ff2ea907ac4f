"""The demo orchestration (`megatron_vrft.demo.run.run_demo`) shortened for tests_demo's test:
a few clips per split, 2 SFT and 2 GRPO steps. Run: torchrun --nproc-per-node 2 _small_demo.py OUT"""

import sys

from megatron_vrft.demo.run import run_demo
from megatron_vrft.demo.task import TaskSizes

if __name__ == "__main__":
    run_demo(sys.argv[1], seed=1, sizes=TaskSizes(sft=4, grpo=4, heldout=4),
             sft_overrides=["sft.max_steps=2", "data.global_batch_size=2"],
             grpo_overrides=["grpo.max_steps=2", "grpo.prompts_per_step=2", "grpo.num_generations=2",
                             "rollout.max_new_tokens=16"])

"""``examples/run_grpo.py`` with the HF engine's completions partly scripted, for the bad-input tests.

    python tests/trainer/_grpo_scripted.py --config FILE [key=value ...]

Env ``GRPO_SCRIPT``: comma-separated edits of every prompt's group, applied after the real sampling:
``empty0`` replaces completion 0 by an empty one (0 tokens, as when the first sampled token is a
media placeholder); ``think1`` replaces completion 1 by a fixed ``<think>..</think><answer>..</answer>``
text + EOS whose logprobs the engine itself computes by teacher forcing (``HFEngine.score``), as if
the model had sampled it: the judge-based TAR reward only asks the judge about such completions.
"""

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from examples.run_grpo import main  # noqa: E402
from megatron_vrft.rollout import hf  # noqa: E402
from megatron_vrft.rollout.base import Completion  # noqa: E402

THINK = "<think>At 00:01 the square is visible.</think>\n<answer>A. white</answer>"
_real = hf.HFEngine.generate


def _generate(self, prompts, sampling):
    groups = _real(self, prompts, sampling)
    edits = os.environ.get("GRPO_SCRIPT", "").split(",")
    for item, group in zip(prompts, groups):
        if "empty0" in edits:
            group[0] = Completion(torch.zeros(0, dtype=torch.long), torch.zeros(0), "", "length")
        if "think1" in edits:
            ids = torch.tensor(self.tokenizer.encode(THINK, add_special_tokens=False) + [int(self.stop_ids[0])])
            group[1] = Completion(ids, self.score(item.sequence, ids, sampling.temperature), THINK, "stop")
    return groups


hf.HFEngine.generate = _generate

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Write a tiny random Qwen2.5-VL in HF format (config.json + safetensors) for demos and CPU checks.

    python tools/make_tiny_model.py --out outputs/demo/hf [--seed 0] [--tied]

Nothing is downloaded: the architecture comes from ``megatron_vrft.testing.tiny_qwen`` (2 vision
blocks with one full-attention block, GQA language model, mRoPE), the weights from ``--seed``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_vrft.testing.tiny_qwen import save_tiny_hf  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed")
    parser.add_argument("--tied", action="store_true", help="tie input and output embeddings (like the 3B)")
    args = parser.parse_args()
    model = save_tiny_hf(args.out, seed=args.seed, tie_word_embeddings=args.tied)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: tiny Qwen2.5-VL, {n:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())

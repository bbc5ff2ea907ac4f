"""Convert an HF Qwen2.5-VL checkpoint (safetensors) into the Megatron-Core weights checkpoint.

    python checkpoint_convert/hf_to_mcore.py --hf-dir /models/Qwen2.5-VL-7B-Instruct \
        --out-dir /ckpt/qwen25vl-7b-mcore --tp 2 --pp 2 [--first-stage-layers 10] [--overwrite]

The output (layout in docs/checkpoints.md) loads into the trainer at this or any other TP/PP.
Tensor bytes are moved from file to file without building tensors (peak RAM ~0.5 GB whatever
the model size), dtypes are kept, and the directory appears only when complete (temp dir +
fsync + COMPLETE marker + rename). Bad input (another architecture, a missing shard, a TP that does not divide the
heads, a wrong shape) stops with one ``error:`` line and exit status 2, before anything is written.
"""

import argparse
import gc
import sys
from pathlib import Path

# Importing torch and transformers allocates ~1M objects and triggers full collections for nothing
# (~0.3 s of start-up); a conversion creates no reference cycles, so the collector stays off.
gc.disable()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_vrft.checkpoint.convert import convert_hf_to_mcore, run_cli  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf-dir", required=True, help="HF checkpoint dir (config.json + *.safetensors)")
    ap.add_argument("--out-dir", required=True, help="output mcore checkpoint dir (created atomically)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size to shard for (default 1)")
    ap.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to shard for (default 1)")
    ap.add_argument("--first-stage-layers", type=int, default=None,
                    help="LLM layers on PP stage 0 (it also runs the ViT); default: even split")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out-dir")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args()
    out = convert_hf_to_mcore(a.hf_dir, a.out_dir, tp=a.tp, pp=a.pp, first_stage_layers=a.first_stage_layers,
                              overwrite=a.overwrite, progress=not a.no_progress)
    print(f"wrote mcore checkpoint {out} (tp={a.tp}, pp={a.pp})")


if __name__ == "__main__":
    run_cli(main)

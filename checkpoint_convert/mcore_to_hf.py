"""Convert a Megatron-Core weights checkpoint (any TP/PP) back to HF Qwen2.5-VL safetensors.

    python checkpoint_convert/mcore_to_hf.py --mcore-dir /ckpt/qwen25vl-7b-mcore \
        --out-dir /models/qwen25vl-7b-finetuned [--hf-config /models/Qwen2.5-VL-7B-Instruct] [--overwrite]

Writes the released key layout (``visual.*``, ``model.*``, ``lm_head.weight`` unless tied) as
``model-0000k-of-0000n.safetensors`` shards of at most ``--max-shard-gb`` with
``model.safetensors.index.json``, plus ``config.json``; the result loads with
``Qwen2_5_VLForConditionalGeneration.from_pretrained`` and vLLM. ``--hf-config DIR`` copies that
directory's config, generation config, tokenizer and processor files (after checking it describes
the same model); without it the HF config stored in the checkpoint is written. Streaming, atomic,
and one ``error:`` line (exit 2) on bad input, as for hf_to_mcore.py.
"""

import argparse
import gc
import sys
from pathlib import Path

# Importing torch and transformers allocates ~1M objects and triggers full collections for nothing
# (~0.3 s of start-up); a conversion creates no reference cycles, so the collector stays off.
gc.disable()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_vrft.checkpoint.convert import convert_mcore_to_hf, run_cli  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mcore-dir", required=True, help="mcore checkpoint dir written by hf_to_mcore.py or the trainer")
    ap.add_argument("--out-dir", required=True, help="output HF dir (created atomically)")
    ap.add_argument("--hf-config", default=None, help="HF dir whose config/tokenizer/processor files to copy")
    ap.add_argument("--max-shard-gb", type=float, default=5.0, help="max size of one safetensors file (default 5)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out-dir")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args()
    out = convert_mcore_to_hf(a.mcore_dir, a.out_dir, hf_config_dir=a.hf_config,
                              max_shard_bytes=int(a.max_shard_gb * 1024**3), overwrite=a.overwrite,
                              progress=not a.no_progress)
    print(f"wrote HF checkpoint {out}")


if __name__ == "__main__":
    run_cli(main)

#!/usr/bin/env bash
# CPU end-to-end demo (2 processes, gloo, no GPU, nothing downloaded):
#   synthetic videos + annotations -> media check -> tiny random Qwen2.5-VL (HF) -> Megatron-Core
#   checkpoint at TP=2 -> HF-vs-mcore logit check at TP=2 and at PP=2 (resharded load) -> back to HF.
# Run:  bash examples/demo.sh [OUT_DIR]      (default outputs/demo; takes about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/demo}
rm -rf "$OUT"
python tools/make_synthetic.py --out "$OUT/data" --formats llava_conv,rarft_riq --num 4
python tools/check_videos.py "$OUT/data/llava_conv/sft.json" --format llava_conv \
    --media-root "$OUT/data/videos"
python tools/make_tiny_model.py --out "$OUT/hf"
python checkpoint_convert/hf_to_mcore.py --hf-dir "$OUT/hf" --out-dir "$OUT/mcore" --tp 2
torchrun --nproc-per-node 2 checkpoint_convert/verify.py --hf-dir "$OUT/hf" --mcore-dir "$OUT/mcore" --tp 2
torchrun --nproc-per-node 2 checkpoint_convert/verify.py --hf-dir "$OUT/hf" --mcore-dir "$OUT/mcore" --tp 1 --pp 2
python checkpoint_convert/mcore_to_hf.py --mcore-dir "$OUT/mcore" --out-dir "$OUT/hf_roundtrip" --hf-config "$OUT/hf"
echo "demo finished: outputs under $OUT"

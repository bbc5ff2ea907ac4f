"""Write a tiny random Qwen2.5-VL in HF format (config.json + safetensors) for demos and CPU checks.

    python tools/make_tiny_model.py --out outputs/demo/hf [--seed 0] [--tied] [--tokenizer] [--small]
    python tools/make_tiny_model.py --out outputs/tiny/hf --rollout     # GRPO: loadable by vLLM too

Nothing is downloaded: the architecture comes from ``megatron_vrft.testing.tiny_qwen`` (2 vision
blocks with one full-attention block, GQA language model, mRoPE), the weights from ``--seed``.
``--tokenizer`` also writes the tiny byte-level tokenizer with Qwen2.5-VL's special tokens
(``megatron_vrft.data.testing``) and sizes the vocabulary and the vision token ids to it, so the
directory is a complete ``model.hf_path`` for the trainer (``examples/run_sft.py``). ``--small``
widens it to bench/bench_model.py's shape (LLM 4 layers x 256, ViT 4 blocks x 128) for benchmarks.
``--rollout`` writes the rollout-engine shape instead (``tiny_qwen.ROLLOUT_SHAPES["vllm"]``: head_dim
32, which vLLM's CPU kernels need) with tokenizer, generation and processor configs: a
``model.hf_path`` for ``examples/run_grpo.py`` on either engine (examples/configs/tiny/*.yaml).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_vrft.testing.tiny_qwen import tiny_hf_model  # noqa: E402


# bench/bench_model.py's scaled-down Qwen2.5-VL (the real patch/merge/window layout, small widths).
SMALL_TEXT = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]})
SMALL_VISION = dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, window_size=112,
                    fullatt_block_indexes=[1, 3])


def match_tokenizer(model, tok) -> None:
    """Points the model config's vision token ids at ``tok``'s special tokens (in place)."""
    from megatron_vrft.data.template import VisionTokenIds

    ids = VisionTokenIds.from_tokenizer(tok)
    cfg = model.config
    cfg.image_token_id, cfg.video_token_id = ids.image_pad, ids.video_pad
    cfg.vision_start_token_id, cfg.vision_end_token_id = ids.vision_start, ids.vision_end
    cfg.text_config.eos_token_id = ids.im_end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed")
    parser.add_argument("--tied", action="store_true", help="tie input and output embeddings (like the 3B)")
    parser.add_argument("--tokenizer", action="store_true", help="also write the tiny tokenizer (trainer-ready directory)")
    parser.add_argument("--small", action="store_true", help="bench_model.py's wider shape instead of the tiny one")
    parser.add_argument("--rollout", action="store_true", help="the rollout-engine shape, loadable by vLLM and the trainer")
    args = parser.parse_args()
    if args.rollout:
        from megatron_vrft.testing.tiny_qwen import save_tiny_rollout_dir

        model = save_tiny_rollout_dir(args.out, seed=args.seed)
        print(f"wrote {args.out}: tiny Qwen2.5-VL (rollout shape), {sum(p.numel() for p in model.parameters()):,} "
              "parameters + tokenizer")
        return 0
    text, tok = (dict(SMALL_TEXT) if args.small else {}), None
    if args.tokenizer:
        from megatron_vrft.data.testing import build_tiny_tokenizer, vocab_size_of

        tok = build_tiny_tokenizer()
        text["vocab_size"] = vocab_size_of(tok)
    model = tiny_hf_model(seed=args.seed, tie_word_embeddings=args.tied, text=text,
                          vision=SMALL_VISION if args.small else None)
    if tok is not None:
        match_tokenizer(model, tok)
        tok.save_pretrained(args.out)
    model.save_pretrained(args.out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: tiny Qwen2.5-VL, {n:,} parameters" + (" + tokenizer" if tok is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

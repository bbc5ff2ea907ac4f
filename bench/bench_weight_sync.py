"""Weight sync (mcore -> rollout engine) seconds per GB vs a plain copy of the same tensors, on CPU.

Run (repository root):
    PYTHONPATH=. python bench/bench_weight_sync.py [--engine hf|vllm|both] [--repeats 3] [--bucket-mb 512]
    PYTHONPATH=. torchrun --nproc-per-node 2 bench/bench_weight_sync.py --tp 2      # TP shards gathered

A scaled-down Qwen2.5-VL (fp32, ~0.3 GB: LLM 6 layers x 768, vocab 32000, ViT 4 x 512) is built in
mcore at the given TP (PP=1) with the weights of a random HF model. Measured, interleaved round by
round (load drift on the shared machine hits all alike), ``--repeats`` times:

- ``sync``: `rollout.sync.sync_weights` into the engine: TP all-gather + weight map + buckets +
  the engine's load (HF: ``copy_`` into the transformers model; vLLM: ``reload_weights`` + cache resets);
- ``export``: ``live.export_hf_state`` alone (gather + map, nothing sent);
- ``copy``: the baseline, ``dst.copy_(src)`` of the same HF tensors into preallocated tensors.

Printed: seconds per GB (min / median / max) and each median relative to the copy's. Rank 0 prints.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

TEXT = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12,
            num_key_value_heads=4, bos_token_id=256, eos_token_id=258, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]})
VISION = dict(depth=4, hidden_size=512, intermediate_size=1024, num_heads=8, fullatt_block_indexes=[3])
TOKENS = dict(image_token_id=268, video_token_id=269, vision_start_token_id=265, vision_end_token_id=266)


def _stats(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("hf", "vllm", "both"), default="both")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=float, default=512)
    ap.add_argument("--tp", type=int, default=1)
    args = ap.parse_args()

    import torch.distributed as dist

    from megatron_vrft.config import RolloutConfig
    from megatron_vrft.data.testing import build_tiny_tokenizer
    from megatron_vrft.models.qwen2_5_vl.live import export_hf_state, load_into_model
    from megatron_vrft.models.qwen2_5_vl.model import Qwen25VLModel
    from megatron_vrft.rollout.hf import HFEngine
    from megatron_vrft.rollout.sync import sync_weights
    from megatron_vrft.runtime import init_distributed
    from megatron_vrft.testing.tiny_qwen import save_rollout_dir, tiny_hf_model

    init_distributed(args.tp, 1, seed=0)
    rank = dist.get_rank()
    hf = tiny_hf_model(seed=0, text=TEXT, vision={**VISION, "out_hidden_size": TEXT["hidden_size"]}, **TOKENS)
    cfg = hf.config
    model = Qwen25VLModel(cfg, perform_initialization=False).eval()
    load_into_model(model, hf.state_dict(), cfg)
    engines = {}
    if args.engine in ("hf", "both"):
        engines["hf"] = HFEngine(hf, build_tiny_tokenizer(), [258])
    if args.engine in ("vllm", "both"):
        from megatron_vrft.rollout.vllm import VLLMEngine

        where = [tempfile.mkdtemp(prefix="bench_sync_") if rank == 0 else None]
        dist.broadcast_object_list(where, src=0)
        tmp = where[0]
        if rank == 0:
            save_rollout_dir(tmp, hf)
        dist.barrier()
        engines["vllm"] = VLLMEngine(tmp, cfg, RolloutConfig(max_model_len=1024, max_media_per_prompt=1),
                                     dtype=torch.float32, seed=0)
    src = dict(export_hf_state(model, cfg))
    gb = sum(t.numel() * t.element_size() for t in src.values()) / 1e9
    dst = {n: torch.empty_like(t) for n, t in src.items()}

    def copy():
        for n, t in src.items():
            dst[n].copy_(t)

    def export():
        for _ in export_hf_state(model, cfg):
            pass

    fns = {"copy": copy, "export": export}
    for name, eng in engines.items():
        fns[f"sync -> {name}"] = lambda eng=eng: sync_weights(model, cfg, eng, bucket_mb=args.bucket_mb)
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, fn in fns.items():
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    if rank == 0:
        copy_med = _stats(times["copy"])[1] / gb
        print(f"model {gb:.3f} GB fp32 ({len(src)} HF tensors), TP={args.tp}, bucket {args.bucket_mb} MiB, "
              f"{args.repeats} runs, torch threads {torch.get_num_threads()}")
        print("| what | s/GB min | median | max | median / copy |")
        print("|---|---:|---:|---:|---:|")
        for k, ts in times.items():
            lo, med, hi = (x / gb for x in _stats(ts))
            print(f"| {k} | {lo:.3f} | {med:.3f} | {hi:.3f} | {med / copy_med:.2f} |")


if __name__ == "__main__":
    main()

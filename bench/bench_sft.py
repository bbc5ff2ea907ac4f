"""SFT step time: this trainer (mcore schedule + DDP + optimizer, THD-packed micro-batches) vs a
hand-written HF loop (transformers ``Qwen2_5_VLForConditionalGeneration``, padded micro-batches,
``torch.optim.AdamW``, ``clip_grad_norm_``), same tiny model, same samples, same batch, on CPU.

    python bench/bench_sft.py [--steps 8] [--warmup 2] [--repeats 3] [--threads 1] [--one-micro-batch] [--small]

Both sides get the same pre-decoded steps (global batch 4 = 2 micro-batches of 2 samples, gradient
accumulation over them; with ``--one-micro-batch`` one micro-batch of 4: a single THD row for us, a
padded batch of 4 for HF), so decoding is not timed; a step = zero grads, forward + backward of every
micro-batch, gradient clipping at 1.0, one AdamW update (lr 1e-3). The two loops alternate step by
step (ours, HF, ours, ...) so that load from other processes hits both alike. Prints per-step
times (min / median / max over repeats of the median step) and the ratio ours / HF.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def hf_micro_batch(mb, video_token: int, image_token: int) -> dict:
    """A packed THD row -> HF's padded ``[n, S]`` inputs (right padding, labels -100 off-target)."""
    n, s = len(mb.seq_lens), max(mb.seq_lens)
    ids = torch.zeros(n, s, dtype=torch.long)
    attn = torch.zeros(n, s, dtype=torch.long)
    labels = torch.full((n, s), -100, dtype=torch.long)
    for i, sl in enumerate(mb.sample_slices()):
        row, mask = mb.input_ids[0, sl], mb.loss_mask[0, sl].bool()
        k = len(row)
        ids[i, :k], attn[i, :k] = row, 1
        # packed labels are shifted (position j predicts j+1); HF shifts itself: label j+1 = token j+1
        labels[i, 1:k] = torch.where(mask[: k - 1], row[1:], torch.full_like(row[1:], -100))
    mm = torch.zeros_like(ids)
    mm[ids == image_token] = 1
    mm[ids == video_token] = 2
    out = dict(input_ids=ids, attention_mask=attn, labels=labels, mm_token_type_ids=mm)
    if mb.pixel_values_videos is not None:
        out.update(pixel_values_videos=mb.pixel_values_videos, video_grid_thw=mb.video_grid_thw,
                   second_per_grid_ts=mb.second_per_grid_ts)
    if mb.pixel_values is not None:
        out.update(pixel_values=mb.pixel_values, image_grid_thw=mb.image_grid_thw)
    return out


def hf_step(model, opt, micro_batches: list[dict]) -> float:
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for mb in micro_batches:
        loss = model(**mb).loss / len(micro_batches)
        loss.backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both sides)")
    parser.add_argument("--small", action="store_true",
                        help="bench_model.py's wider model (make_tiny_model.py --small) and 224x224 frames")
    parser.add_argument("--one-micro-batch", action="store_true",
                        help="the whole step in one micro-batch: ours one THD row (data.pack_tokens), HF one padded batch of 4")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vrft.config import load_config
    from megatron_vrft.testing.sft_run import write_tiny_sft
    from megatron_vrft.trainer.setup import build
    from megatron_vrft.trainer.sft import sft_step

    n_steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        video = {"min_pixels": 224 * 224, "max_pixels": 224 * 224} if args.small else {}
        path = write_tiny_sft(Path(tmp), num=8, small=args.small, sft={"epochs": 100})
        if video:  # the YAML's video section, widened
            import yaml

            raw = yaml.safe_load(path.read_text())
            raw["data"]["video"].update(video)
            path.write_text(yaml.safe_dump(raw))
        overrides = [f"sft.max_steps={n_steps * args.repeats}"]
        if args.one_micro_batch:
            overrides.append("data.pack_tokens=4096")
        run = build(load_config(str(path), overrides))
        steps = [run.train.next_batch() for _ in range(n_steps)]
        hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(run.cfg.model.hf_path, attn_implementation="sdpa",
                                                                dtype=torch.float32).train()
        opt = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        cfg = hf.config
        hf_steps = [[hf_micro_batch(m, cfg.video_token_id, cfg.image_token_id) for m in s.micro_batches] for s in steps]
        if not args.one_micro_batch:
            assert all(len(s.micro_batches) == 2 for s in steps)
        medians = {"ours": [], "hf": []}
        for _ in range(args.repeats):
            times = {"ours": [], "hf": []}
            for i in range(n_steps):
                t0 = time.perf_counter()
                sft_step(run, steps[i])
                t1 = time.perf_counter()
                hf_step(hf, opt, hf_steps[i])
                t2 = time.perf_counter()
                if i >= args.warmup:
                    times["ours"].append(t1 - t0)
                    times["hf"].append(t2 - t1)
            for k in medians:
                medians[k].append(statistics.median(times[k]))
    tokens = steps[0].num_tokens
    for k in ("ours", "hf"):
        m = medians[k]
        print(f"{k:5s} step: min {min(m) * 1e3:7.1f} ms  median {statistics.median(m) * 1e3:7.1f} ms  "
              f"max {max(m) * 1e3:7.1f} ms  ({tokens} tokens/step)")
    ratios = [a / b for a, b in zip(medians["ours"], medians["hf"])]
    print(f"ratio ours/HF: min {min(ratios):.2f}  median {statistics.median(ratios):.2f}  max {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a checkpoint on a data set with the rollout engine: a JSON report and per-sample JSONL.

    python tools/eval/evaluate.py --checkpoint outputs/run/export_hf --data data/heldout.json \
        --format llava_conv --media-root data/videos --out outputs/eval [--engine hf] [--metric auto]

--checkpoint is an HF directory (config.json + safetensors + tokenizer files) or a Megatron-Core
checkpoint directory (hf_to_mcore.py output or a trainer checkpoint step directory), which is first
converted to HF in a temporary directory (with --hf-config giving the tokenizer/processor files).
Generation goes through the project's rollout engine (vLLM on GPU, HF on CPU: --engine), greedy by
default (--temperature 0). The metric follows the data's reward columns (tools/eval/metrics.py:
binary or multiple-choice accuracy, temporal-grounding mIoU and R@{0.3,0.5,0.7}, RA-RFT refusal
accuracy) unless --metric names one. Writes ``OUT/report.json`` (metrics, counts, settings) and
``OUT/samples.jsonl`` (one line per prompt: id, completion, parsed answer, score).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from metrics import METRICS, aggregate, metric_for, score_rows  # noqa: E402


def hf_dir_of(checkpoint: Path, hf_config: Path | None, workdir: Path) -> Path:
    """``checkpoint`` itself when it is an HF directory, else its conversion under ``workdir``."""
    if (checkpoint / "config.json").is_file():
        return checkpoint
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such directory")
    from megatron_vrft.checkpoint.convert import convert_mcore_to_hf

    return Path(convert_mcore_to_hf(checkpoint, workdir / "hf", hf_config_dir=hf_config, progress=False))


def run_eval(engine, items, sampling, metric: str = "auto", metric_options: dict | None = None) -> tuple[dict, list[dict]]:
    """Generate one completion per prompt item (`LoadedItem`s) and score them.

    Returns ``(metrics, rows)``: the aggregate numbers, and one dict per prompt (``id``,
    ``completion``, ``parsed``, ``score`` + metric facts) in item order.
    """
    if not items:
        raise ValueError("nothing to evaluate: no usable prompts")
    columns = [item.sample.columns for item in items]
    if metric == "auto":
        kinds = {metric_for(c) for c in columns}
        if len(kinds) != 1:
            raise ValueError(f"rows call for different metrics {sorted(kinds)}; pass --metric")
        metric = kinds.pop()
    completions = [group[0] for group in engine.generate(items, sampling)]
    texts = [c.text for c in completions]
    scored = score_rows(metric, texts, columns, **(metric_options or {}))
    rows = [{"id": item.sample.id, "completion": text, "parsed": s.parsed, "score": s.score,
             "finish_reason": c.finish_reason, **s.extra}
            for item, text, s, c in zip(items, texts, scored, completions)]
    return {"metric": metric, **aggregate(metric, scored)}, rows


def write_outputs(out: Path, report: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def _load_items(args, tokenizer, hf_config, video_options: dict):
    from megatron_vrft.data import load_samples
    from megatron_vrft.data.loader import DataStream, ResumableSampler, SampleDataset
    from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig

    samples, load_report = load_samples(args.data, args.format, args.media_root, mode="grpo",
                                        video_options=video_options, limit=args.limit)
    dataset = SampleDataset(samples, tokenizer, RopeIndexConfig.from_hf_config(hf_config), task="grpo",
                            max_length=args.max_prompt_tokens)
    stream = DataStream(dataset, ResumableSampler(len(samples), shuffle=False), num_workers=args.num_workers,
                        name="eval")
    items = [item for batch in stream.grpo_batches(len(samples)) for item in batch]
    skips = {**dict(load_report.skipped), **dict(stream.reports[-1].skipped)}
    return items, skips


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, type=Path, help="HF dir, or mcore/trainer checkpoint dir")
    ap.add_argument("--hf-config", type=Path, default=None, help="HF dir with tokenizer/processor files (mcore input)")
    ap.add_argument("--data", required=True, help="annotation file")
    ap.add_argument("--format", required=True, help="dataset format (data.format of the config)")
    ap.add_argument("--media-root", default=None, help="directory media paths resolve against")
    ap.add_argument("--video", default="{}", help='video sampling as JSON, e.g. \'{"nframes": 16, "max_pixels": 50176}\'')
    ap.add_argument("--out", required=True, type=Path, help="output directory (report.json, samples.jsonl)")
    ap.add_argument("--engine", choices=("hf", "vllm"), default=None, help="rollout engine (default: vllm on GPU, hf on CPU)")
    ap.add_argument("--metric", choices=("auto", *METRICS), default="auto")
    ap.add_argument("--labels", default=None, help="binary metric: comma-separated valid labels (default normal,abnormal)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N prompts only")
    ap.add_argument("--max-prompt-tokens", type=int, default=None, help="skip longer prompts (counted)")
    ap.add_argument("--num-workers", type=int, default=2, help="video-decoding workers")
    args = ap.parse_args(argv)
    try:
        video_options = json.loads(args.video)
    except json.JSONDecodeError as e:
        print(f"error: --video is not JSON: {e}", file=sys.stderr)
        return 2

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from megatron_vrft.config import RolloutConfig
    from megatron_vrft.rollout import build_engine
    from megatron_vrft.rollout.base import SamplingParams

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="vrft_eval_") as tmp:
        hf_dir = hf_dir_of(args.checkpoint, args.hf_config, Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        hf_config = AutoConfig.from_pretrained(hf_dir)
        items, skips = _load_items(args, tokenizer, hf_config, video_options)
        engine_kind = args.engine or ("vllm" if torch.cuda.is_available() else "hf")
        engine = build_engine(RolloutConfig(engine=engine_kind, max_new_tokens=args.max_new_tokens,
                                            temperature=args.temperature), hf_dir, tokenizer)
        sampling = SamplingParams(n=1, temperature=args.temperature, top_p=1.0, top_k=-1,
                                  max_new_tokens=args.max_new_tokens, seed=args.seed)
        options = {"labels": args.labels.split(",")} if args.labels else {}
        metrics, rows = run_eval(engine, items, sampling, args.metric, options)
    report = {"checkpoint": str(args.checkpoint), "data": args.data, "format": args.format, "engine": engine_kind,
              "temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "skipped": skips,
              "seconds": round(time.time() - t0, 1), "metrics": metrics}
    write_outputs(args.out, report, rows)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())

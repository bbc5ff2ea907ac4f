"""Evaluate a checkpoint on a data set with the rollout engine: a JSON report and per-sample JSONL.

    python tools/eval/evaluate.py --checkpoint outputs/run/export_hf --data data/heldout.json \
        --format llava_conv --media-root data/videos --out outputs/eval [--engine hf] [--metric auto]

--checkpoint is an HF directory (config.json + safetensors + tokenizer files), a trainer checkpoint
(a ``step_<N>`` directory, or a ``checkpoint.save_dir``: its newest complete step) or a converted
mcore checkpoint (hf_to_mcore.py output); the last two are first converted to HF in a temporary
directory, with --hf-config giving the tokenizer/processor files (e.g. the run's model.hf_path).
Generation goes through the project's rollout engine (`rollout.base.make_engine`: vLLM on GPU, HF on
CPU, --engine), greedy by default (--temperature 0, argmax in both engines). The metric follows the
data's reward columns (tools/eval/metrics.py: binary or multiple-choice accuracy, temporal-grounding
mIoU and R@{0.3,0.5,0.7}, RA-RFT refusal accuracy) unless --metric names one. Writes
``OUT/report.json`` (metrics, counts, settings) and ``OUT/samples.jsonl`` (one line per prompt: id,
completion, parsed answer, score).
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
    """``checkpoint`` itself when it is an HF directory, else its conversion under ``workdir``.

    A trainer ``checkpoint.save_dir`` (``step_<N>`` directories) stands for its newest complete step.
    The conversion needs ``hf_config`` for the tokenizer / processor files (checkpoints hold none).
    """
    if (checkpoint / "config.json").is_file():
        return checkpoint
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such directory")
    from megatron_vrft.checkpoint.convert import convert_mcore_to_hf
    from megatron_vrft.trainer.checkpoint import STATE_FILE, latest_checkpoint

    if not (checkpoint / STATE_FILE).is_file() and any(checkpoint.glob("step_*")):
        latest = latest_checkpoint(checkpoint)
        if latest is None:
            raise FileNotFoundError(f"--checkpoint {checkpoint}: step_* directories but no complete trainer checkpoint")
        checkpoint = latest
    if hf_config is None:
        raise ValueError(f"--checkpoint {checkpoint} is not an HF directory (no config.json): pass --hf-config "
                         "DIR with the tokenizer/processor files (e.g. the run's model.hf_path)")
    if (checkpoint / STATE_FILE).is_file():
        return trainer_checkpoint_to_hf(checkpoint, workdir / "hf", hf_config)
    return Path(convert_mcore_to_hf(checkpoint, workdir / "hf", hf_config_dir=hf_config, progress=False))


def trainer_checkpoint_to_hf(step_dir: Path, out: Path, processor_dir: Path) -> Path:
    """A trainer checkpoint (any TP/PP) -> HF directory, in this process: the model is built at
    TP = PP = 1 (a one-process gloo/nccl group), its weights loaded from ``step_dir`` (distributed
    checkpointing reshards) and exported through the weight map with ``processor_dir``'s side files.
    The trainer checkpoint stores a distributed-checkpoint state, not the converter's mcore layout,
    hence no offline conversion."""
    from types import SimpleNamespace

    import torch

    from megatron_vrft.models.qwen2_5_vl.model import Qwen25VLModel
    from megatron_vrft.models.qwen2_5_vl.weights import as_hf_config
    from megatron_vrft.runtime import init_distributed
    from megatron_vrft.trainer.checkpoint import load_model_from_checkpoint, read_trainer_state
    from megatron_vrft.trainer.weights_io import export_hf

    state = read_trainer_state(step_dir)
    hf_config = as_hf_config(state["hf_config"])
    init_distributed(1, 1)
    model = Qwen25VLModel(hf_config, params_dtype=torch.float32, calculate_per_token_loss=True)
    load_model_from_checkpoint([model], step_dir)
    run = SimpleNamespace(model=[model], hf_config=hf_config, processor_dir=str(processor_dir),
                          cfg=SimpleNamespace(model=SimpleNamespace(first_stage_llm_layers=None)))
    return export_hf(run, out)


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


def _load_items(args, tokenizer, hf_config, video_options: dict, image_options: dict, format_options: dict):
    from megatron_vrft.data import load_samples
    from megatron_vrft.data.loader import DataStream, ResumableSampler, SampleDataset
    from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig

    samples, load_report = load_samples(args.data, args.format, args.media_root, mode="grpo",
                                        video_options=video_options, image_options=image_options,
                                        limit=args.limit, **format_options)
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
    ap.add_argument("--image", default="{}", help='image sizing as JSON, e.g. \'{"max_pixels": 200704}\'')
    ap.add_argument("--options", default="{}", help='the format\'s adapter options as JSON (data.options), e.g. '
                    '\'{"subtitles_root": "subs"}\'')
    ap.add_argument("--out", required=True, type=Path, help="output directory (report.json, samples.jsonl)")
    ap.add_argument("--engine", choices=("hf", "vllm"), default=None, help="rollout engine (default: vllm on GPU, hf on CPU)")
    ap.add_argument("--metric", choices=("auto", *METRICS), default="auto")
    ap.add_argument("--labels", default=None, help="binary metric: comma-separated valid labels (default normal,abnormal)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16", help="engine dtype (fp32 on CPU tests)")
    ap.add_argument("--max-model-len", type=int, default=8192, help="vLLM context length (prompt + completion)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N prompts only")
    ap.add_argument("--max-prompt-tokens", type=int, default=None, help="skip longer prompts (counted)")
    ap.add_argument("--num-workers", type=int, default=2, help="video-decoding workers")
    args = ap.parse_args(argv)
    parsed = {}
    for flag in ("video", "image", "options"):
        try:
            parsed[flag] = json.loads(getattr(args, flag))
        except json.JSONDecodeError as e:
            print(f"error: --{flag} is not JSON: {e}", file=sys.stderr)
            return 2
        if not isinstance(parsed[flag], dict):
            print(f"error: --{flag} must be a JSON object, got {getattr(args, flag)!r}", file=sys.stderr)
            return 2

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from megatron_vrft.config import RunConfig
    from megatron_vrft.rollout.base import SamplingParams, make_engine

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="vrft_eval_") as tmp:
        hf_dir = hf_dir_of(args.checkpoint, args.hf_config, Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        hf_config = AutoConfig.from_pretrained(hf_dir)
        items, skips = _load_items(args, tokenizer, hf_config, parsed["video"], parsed["image"], parsed["options"])
        engine_kind = args.engine or ("vllm" if torch.cuda.is_available() else "hf")
        cfg = RunConfig(seed=args.seed)
        cfg.rollout.engine, cfg.model.dtype = engine_kind, args.dtype
        cfg.rollout.max_new_tokens, cfg.rollout.temperature = args.max_new_tokens, args.temperature
        cfg.rollout.max_model_len = args.max_model_len
        cfg.rollout.sleep_mode = False  # one generate call, nothing to make room for
        engine = make_engine(cfg, hf_config, str(hf_dir), tokenizer=tokenizer)
        sampling = SamplingParams.from_config(cfg.rollout, n=1, seed=args.seed)
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

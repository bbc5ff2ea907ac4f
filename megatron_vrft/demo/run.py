"""The self-contained CPU demo: task + tiny model -> base eval -> SFT -> eval -> GRPO -> eval -> table.

    torchrun --nproc-per-node 2 examples/run_grpo.py [--out DIR] [--seed N]

(`examples/run_grpo.py` without ``--config`` calls `run_demo`.) Every phase is collective over the
job's processes:

1. rank 0 writes the task (`demo.task`) under ``OUT/task`` and the random model (`demo.model`)
   under ``OUT/hf``;
2. the held-out prompts are answered greedily through the HF rollout engine (the prompts split
   across the ranks) and scored with the GRPO rewards (`demo.report`);
3. SFT warm-up: ``examples/configs/demo_sft.yaml`` through the real trainer (`trainer.setup.build`
   + `trainer.loop.train`, TP=2 on two processes), exported to ``OUT/sft/hf``; eval;
4. GRPO from that export: ``examples/configs/demo_grpo.yaml`` through the GRPO trainer, exported to
   ``OUT/grpo/hf``; eval;
5. the table (`demo.report.format_table`) printed and written to ``OUT/demo_table.{md,json}``
   (Markdown; the rows with timings and the seed).

Both trainer phases use the same parallel layout, so the second ``build`` finds torch.distributed
and mcore's parallel state already initialised and reuses them (`runtime.init_distributed` is
idempotent; it re-seeds every RNG for the phase). No trainer checkpoints are written: the phases
hand over through the HF exports, and a rerun starts from scratch.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import torch.distributed as dist

from megatron_vrft.demo.report import format_table, score_heldout
from megatron_vrft.demo.task import VIDEO_OPTIONS, TaskSizes, make_demo_task

__all__ = ["CONFIG_DIR", "TABLE", "run_demo", "phase_overrides", "evaluate_heldout"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "examples" / "configs"
TABLE = "demo_table"  # OUT/<TABLE>.md and .json
EVAL_MAX_NEW_TOKENS = 64  # the reply is ~40 tokens; a random model's text stops here


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _say(msg: str) -> None:
    if _rank() == 0:
        print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def phase_overrides(out: Path, phase: str, model_dir: Path, seed: int) -> list[str]:
    """Config overrides that point a demo config's paths at ``out`` (the YAMLs name the defaults)."""
    task = out / "task"
    return [f"seed={seed}", f"model.hf_path={model_dir}", f"data.media_root={task / 'videos'}",
            f"data.train_path={task / ('sft.json' if phase == 'sft' else 'grpo.json')}", "data.eval_path=null",
            f"logging.output_dir={out / phase}", "checkpoint.save_dir=null", "checkpoint.pretrained_path=null",
            "checkpoint.export_hf=true"]


def _train(config: Path, overrides: list[str]) -> None:
    from megatron_vrft.config import load_config
    from megatron_vrft.trainer import loop
    from megatron_vrft.trainer.setup import build

    cfg = load_config(str(config), overrides)
    if cfg.mode == "grpo":
        from megatron_vrft.trainer.grpo import grpo_step as step_fn
    else:
        from megatron_vrft.trainer.sft import sft_step as step_fn
    loop.train(build(cfg), step_fn)


def evaluate_heldout(model_dir: Path, task_dir: Path, seed: int) -> dict:
    """Greedy completions of the held-out prompts by the HF rollout engine loaded from ``model_dir``,
    each rank answering every ``world``-th prompt; scores gathered on every rank (`score_heldout`)."""
    from transformers import AutoConfig, AutoTokenizer

    from megatron_vrft.data import load_samples
    from megatron_vrft.data.loader import SampleDataset
    from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig
    from megatron_vrft.rollout.base import SamplingParams
    from megatron_vrft.rollout.hf import HFEngine

    rank, world = _rank(), dist.get_world_size() if dist.is_initialized() else 1
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hf_config = AutoConfig.from_pretrained(model_dir)
    samples, report = load_samples(task_dir / "heldout.json", "llava_conv", task_dir / "videos", mode="grpo",
                                   video_options=VIDEO_OPTIONS)
    if report.num_skipped:
        raise RuntimeError(f"demo: {report.num_skipped} held-out prompts could not be loaded: {dict(report.skipped)}")
    dataset = SampleDataset(samples, tokenizer, RopeIndexConfig.from_hf_config(hf_config), task="grpo")
    mine = list(range(rank, len(samples), world))
    items = [dataset[(i, i)] for i in mine]
    engine = HFEngine.from_pretrained(str(model_dir), hf_config, tokenizer=tokenizer)
    sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=EVAL_MAX_NEW_TOKENS, seed=seed)
    texts = [group[0].text for group in engine.generate(items, sampling)]
    local = [(i, t, samples[i].columns["solution"]) for i, t in zip(mine, texts)]
    if dist.is_initialized():
        gathered = [None] * world
        dist.all_gather_object(gathered, local)
        local = [row for part in gathered for row in part]
    local.sort()
    return score_heldout([t for _, t, _ in local], [s for _, _, s in local]) | {
        "examples": [t for _, t, _ in local[:4]]}


def _write_table(out: Path, rows: dict, extra: dict) -> str:
    table = format_table({k: {f: v[f] for f in ("n", "accuracy", "format", "reward")} for k, v in rows.items()})
    if _rank() == 0:
        (out / f"{TABLE}.md").write_text(table + "\n")
        (out / f"{TABLE}.json").write_text(json.dumps({"stages": rows, **extra}, indent=1) + "\n")
    return table


def run_demo(out: str | Path = "outputs/demo", *, seed: int = 0, sizes: TaskSizes | None = None,
             sft_overrides: Sequence[str] = (), grpo_overrides: Sequence[str] = ()) -> dict:
    """Runs the whole demo (collective on every rank of the job); returns the table's rows.
    ``sft_overrides`` / ``grpo_overrides`` go after the demo's own (tests shorten the phases)."""
    from megatron_vrft.config import ConfigError, load_config
    from megatron_vrft.demo.model import write_demo_model
    from megatron_vrft.runtime import init_distributed

    out = Path(out).resolve()
    t_start = time.time()
    configs = {phase: CONFIG_DIR / f"demo_{phase}.yaml" for phase in ("sft", "grpo")}
    layout = {phase: load_config(str(path)).parallel for phase, path in configs.items()}
    if len({(p.tp, p.pp, p.cp) for p in layout.values()}) != 1:
        raise ConfigError(f"demo: {configs['sft']} and {configs['grpo']} must use the same parallel layout "
                          "(the GRPO phase reuses the SFT phase's process groups)")
    p = layout["sft"]
    init_distributed(p.tp, p.pp, p.cp, seed=seed)  # the trainer's build() then finds it initialised
    times: dict[str, float] = {}
    if _rank() == 0:
        for stale in ("task", "hf", "sft", "grpo", f"{TABLE}.md", f"{TABLE}.json"):
            path = out / stale
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        _say(f"writing the tank-level task and the tiny Qwen2.5-VL under {out}")
        make_demo_task(out / "task", seed=seed, sizes=sizes)
        write_demo_model(out / "hf", seed=seed)
    dist.barrier()
    times["setup"] = time.time() - t_start
    rows: dict[str, dict] = {}

    def evaluate(stage: str, model_dir: Path) -> None:
        t0 = time.time()
        _say(f"held-out eval ({stage}): greedy answers from {model_dir}")
        rows[stage] = evaluate_heldout(model_dir, out / "task", seed)
        r = rows[stage]
        times[f"eval {stage}"] = time.time() - t0
        _say(f"{stage}: accuracy {r['accuracy']:.3f}, format {r['format']:.3f}, reward {r['reward']:.3f} "
             f"on {r['n']} prompts; e.g. {r['examples'][0]!r}")

    evaluate("base", out / "hf")
    for phase, model_dir, overrides, stage in (("sft", out / "hf", sft_overrides, "after SFT"),
                                                ("grpo", out / "sft" / "hf", grpo_overrides, "after GRPO")):
        t0 = time.time()
        _say(f"{phase.upper()}: {configs[phase]} from {model_dir}")
        _train(configs[phase], phase_overrides(out, phase, model_dir, seed) + list(overrides))
        times[phase] = time.time() - t0
        evaluate(stage, out / phase / "hf")
    times["total"] = time.time() - t_start
    table = _write_table(out, rows, {"seed": seed, "seconds": {k: round(v, 1) for k, v in times.items()},
                                     "world_size": dist.get_world_size()})
    if _rank() == 0:
        print(table, flush=True)
        _say(f"finished in {times['total'] / 60:.1f} min; table in {out / TABLE}.md")
    return rows

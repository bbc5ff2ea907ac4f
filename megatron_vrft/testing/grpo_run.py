"""A tiny GRPO set-up for tests and benchmarks, and a time-limited launcher for ``examples/run_grpo.py``.

    cfg = write_tiny_grpo(tmp_path, engine="hf")            # vLLM-loadable tiny model, image+video prompts, YAML
    proc = launch_grpo(cfg, ["grpo.max_steps=2"], nproc=1, out=tmp_path / "run")
    records = read_metrics(tmp_path / "run")

The model is `tiny_qwen.save_tiny_rollout_dir` (head_dim 32, the tiny byte-level tokenizer: both
engines load it). The prompts are ``tools/make_synthetic.py``'s llava_conv GRPO videos plus image
prompts (a noise PNG), alternating, so every step has a prompt with an image and one with a video.
The default rewards are ``format`` and ``accuracy`` (0 for a random model's text) and
``tests.trainer.grpo_rewards:letter_share`` (varies between completions, so advantages are not 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from megatron_vrft.runtime.distributed import free_port

__all__ = ["ROOT", "write_tiny_grpo_data", "write_tiny_grpo", "launch_grpo"]

ROOT = Path(__file__).resolve().parents[2]
TINY_VIDEO = {"fps": 2.0, "min_pixels": 56 * 56, "max_pixels": 56 * 56, "image_min_pixels": 56 * 56,
              "image_max_pixels": 56 * 84}
DEFAULT_REWARDS = [{"name": "format", "weight": 1.0}, {"name": "accuracy", "weight": 1.0},
                   {"name": "tests.trainer.grpo_rewards:letter_share", "weight": 1.0}]


def write_tiny_grpo_data(root: Path, num: int = 4) -> Path:
    """``root/grpo.json`` (llava_conv): ``num`` video prompts and ``num`` image prompts, interleaved;
    media under ``root/videos``. Returns the annotation path."""
    from megatron_vrft.data.synthetic import make_synthetic

    root = Path(root)
    make_synthetic(root, ("llava_conv",), num)
    videos = json.loads((root / "llava_conv/grpo.json").read_text())
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(root / "videos/noise.png")
    records = []
    for i, rec in enumerate(videos):
        records.append(rec)
        conv = [{"from": "human", "value": "<image>\nIs anything unusual here?"},
                {"from": "gpt", "value": rec["conversations"][1]["value"]}]
        records.append({"id": f"image_{i}", "image": "noise.png", "conversations": conv})
    path = root / "grpo.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def write_tiny_grpo(root: Path, engine: str = "hf", num: int = 4, **sections) -> Path:
    """Writes ``root/hf`` (tiny model dir), ``root/data`` and ``root/grpo.yaml``; ``sections`` update
    the YAML's sections (e.g. ``grpo={"kl_beta": 0.0}``). Returns the YAML path."""
    from megatron_vrft.testing.tiny_qwen import save_tiny_rollout_dir

    root = Path(root)
    if not (root / "hf/config.json").exists():
        save_tiny_rollout_dir(root / "hf", seed=0)
    data = write_tiny_grpo_data(root / "data", num)
    cfg = {
        "mode": "grpo",
        "model": {"hf_path": str(root / "hf"), "dtype": "fp32"},
        "data": {"train_path": str(data), "format": "llava_conv", "media_root": str(root / "data/videos"),
                 "video": dict(TINY_VIDEO), "max_seq_len": 512, "pack_tokens": 1024, "num_workers": 0,
                 "shuffle": False},
        "optimizer": {"lr": 1e-3, "clip_grad": 1.0, "lr_schedule": "constant"},
        "grpo": {"num_generations": 2, "prompts_per_step": 2, "max_steps": 2, "kl_beta": 0.04,
                 "rewards": [dict(r) for r in DEFAULT_REWARDS]},
        "rollout": {"engine": engine, "max_new_tokens": 8, "temperature": 1.0, "max_model_len": 1024,
                    "max_media_per_prompt": 1, "weight_sync_bucket_mb": 1},
        "logging": {"output_dir": str(root / "out"), "tensorboard": False, "progress_bar": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = root / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def launch_grpo(config: Path, overrides: list[str] = (), *, nproc: int = 1, out: Path | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``examples/run_grpo.py`` (plain python for 1 process, else torchrun); returns the process
    (check ``returncode``, ``stderr``). ``out`` overrides ``logging.output_dir``. Raises on timeout."""
    script = str(ROOT / "examples/run_grpo.py")
    cmd = [sys.executable, script] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-port", str(free_port()), script]
    args = ["--config", str(config), *overrides] + ([f"logging.output_dir={out}"] if out is not None else [])
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)

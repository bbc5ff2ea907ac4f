"""Helpers for tests that drive ``examples/run_sft.py`` end to end: a tiny HF model with tokenizer
(``tools/make_tiny_model.py``), synthetic llava_conv video data (``tools/make_synthetic.py``), a
config writer and a time-limited launcher (plain python for one process, torchrun for more)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(extra or {})}


def make_assets(root: Path, *, tied: bool = False, samples: int = 8) -> dict[str, Path]:
    """``{"hf", "data", "media"}``: a tiny HF model dir with tokenizer and 8 synthetic samples."""
    hf = root / ("hf_tied" if tied else "hf")
    cmd = [sys.executable, "tools/make_tiny_model.py", "--out", str(hf), "--tokenizer"] + (["--tied"] if tied else [])
    subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=120)
    data = root / "data"
    if not (data / "llava_conv" / "sft.json").is_file():
        subprocess.run([sys.executable, "tools/make_synthetic.py", "--out", str(data), "--formats", "llava_conv",
                        "--num", str(samples)], cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=120)
    return {"hf": hf, "data": data / "llava_conv" / "sft.json", "media": data / "videos"}


def write_config(path: Path, assets: dict, out: Path, **sections) -> Path:
    """A tiny SFT config (fp32, 2 samples per step, 2 epochs over 8 samples); ``sections`` update it."""
    cfg = {
        "mode": "sft",
        "seed": 3,
        "model": {"hf_path": str(assets["hf"]), "dtype": "fp32"},
        "data": {"train_path": str(assets["data"]), "format": "llava_conv", "media_root": str(assets["media"]),
                 "video": {"fps": 2.0, "min_pixels": 3136, "max_pixels": 12544},
                 "global_batch_size": 2, "num_workers": 0},
        "optimizer": {"lr": 1.0e-3, "clip_grad": 1.0, "lr_schedule": "cosine", "warmup_steps": 1},
        "sft": {"epochs": 2, "max_steps": 6},
        "logging": {"output_dir": str(out / "out"), "progress_bar": False, "tensorboard": False},
        "checkpoint": {"save_dir": str(out / "ckpt"), "save_interval": 2, "keep_last": 0},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def sft_command(config: Path, overrides: list[str] = (), nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "examples/run_sft.py", "--config", str(config), *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "examples/run_sft.py", "--config", str(config), *overrides]


def run_sft(config: Path, overrides: list[str] = (), *, nproc: int = 1, env: dict | None = None,
            timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(sft_command(config, overrides, nproc), cwd=ROOT, env=_env(env), capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"run_sft.py exited {p.returncode}:\n{p.stderr[-4000:]}")
    return p


def start_sft(config: Path, overrides: list[str] = (), *, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(sft_command(config, overrides), cwd=ROOT, env=_env(env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def losses(out: Path) -> dict[int, float]:
    """step -> loss of the training records in ``out/out/metrics.jsonl`` (each step once)."""
    from megatron_vrft.trainer.metrics import read_metrics

    recs = [r for r in read_metrics(out / "out") if "loss" in r]
    steps = [r["step"] for r in recs]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in recs}

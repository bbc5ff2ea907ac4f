"""A tiny SFT set-up for tests and benchmarks, and a time-limited launcher for ``examples/run_sft.py``.

    cfg = write_tiny_sft(tmp_path)                          # tiny model + tokenizer, synthetic videos, YAML
    proc = launch_sft(cfg, ["parallel.tp=2"], nproc=2, out=tmp_path / "tp2")
    losses = [r["loss"] for r in read_metrics(tmp_path / "tp2")]

The data is ``tools/make_synthetic.py``'s llava_conv SFT set: every answer says whether the video's
square is red or white, so the task is learnable from the pixels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from megatron_vrft.runtime.distributed import free_port

__all__ = ["ROOT", "write_tiny_model", "write_tiny_sft", "launch_sft"]

ROOT = Path(__file__).resolve().parents[2]
# Small frames keep a step well under a second on one CPU core: 56x56 px, 2 fps on 10 fps videos.
TINY_VIDEO = {"fps": 2.0, "min_pixels": 56 * 56, "max_pixels": 112 * 112}


def write_tiny_model(out: Path, seed: int = 0, small: bool = False) -> Path:
    """``tools/make_tiny_model.py --tokenizer [--small]``: a trainer-ready tiny HF directory."""
    subprocess.run([sys.executable, str(ROOT / "tools/make_tiny_model.py"), "--out", str(out), "--seed", str(seed),
                    "--tokenizer", *(["--small"] if small else [])], check=True, capture_output=True, env=_env())
    return out


def write_tiny_sft(root: Path, num: int = 8, small: bool = False, **sections) -> Path:
    """Writes ``root/hf`` (tiny model), ``root/data`` (synthetic llava_conv) and ``root/sft.yaml``.

    ``sections`` update the YAML's sections (e.g. ``optimizer={"lr": 1e-3}``); ``small``: the wider
    benchmark model (``make_tiny_model.py --small``). Returns the YAML path.
    """
    from megatron_vrft.data.synthetic import make_synthetic

    root = Path(root)
    hf = write_tiny_model(root / "hf", small=small)
    make_synthetic(root / "data", ("llava_conv",), num)
    cfg = {
        "mode": "sft",
        "model": {"hf_path": str(hf), "dtype": "fp32"},
        "data": {"train_path": str(root / "data/llava_conv/sft.json"), "format": "llava_conv",
                 "media_root": str(root / "data/videos"), "video": dict(TINY_VIDEO), "global_batch_size": 4,
                 "micro_batch_size": 2, "num_workers": 0},
        "optimizer": {"lr": 1e-3, "clip_grad": 1.0, "lr_schedule": "constant"},
        "sft": {"epochs": 3},
        "logging": {"output_dir": str(root / "out"), "tensorboard": False, "progress_bar": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = root / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def launch_sft(config: Path, overrides: list[str] = (), *, nproc: int = 1, out: Path | None = None,
               timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs ``examples/run_sft.py`` (plain python for 1 process, else torchrun) and returns the process
    (check ``returncode``, ``stderr``). ``out`` overrides ``logging.output_dir``. Raises on timeout."""
    script = str(ROOT / "examples/run_sft.py")
    cmd = [sys.executable, script] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-port", str(free_port()), script]
    args = ["--config", str(config), *overrides] + ([f"logging.output_dir={out}"] if out is not None else [])
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)

"""Checkpoint conversion speed and peak RAM on a Qwen2.5-VL-3B-shaped checkpoint, against a plain
copy of the same safetensors files measured in the same run.

Run from the repository root (needs ~8 GB free under --work-dir per kept directory; ~2-5 min):

    PYTHONPATH=. python bench/bench_convert.py [--work-dir /tmp/bench_convert] [--layouts 1x1,2x1,2x2] [--repeat 2] \
        [--writers odirect,buffered]

1. Writes a random bf16 checkpoint with the released 3B shapes (36 layers, hidden 2048, 16/2 heads,
   vocab 151936, tied embeddings, 32-block ViT), split like the release into two shards of < 4 GiB,
   with the streaming writer; no HF model is instantiated. Reused on later runs (--regenerate).
2. Baseline: ``cp`` semantics (``shutil.copyfile`` + fsync) of those shard files, in a subprocess.
3. ``checkpoint_convert/hf_to_mcore.py`` at each ``--layouts`` TPxPP, then ``mcore_to_hf.py`` of the
   first one back to HF, each in a subprocess. Wall time (including the interpreter and library
   imports) and the subprocess's peak RSS (``VmHWM``) are reported; outputs are deleted after each
   step. Every step runs ``--repeat`` times, interleaved; the table gives the best wall time (load
   from other processes only slows a step down) and the largest peak RSS.
   ``--writers odirect,buffered`` runs every converter step with both output writers of
   ``checkpoint/assemble.py``: the O_DIRECT writer thread (``_Output``, what the converters use) and
   a plain synchronous page-cache writer (``PlainOutput`` below, swapped in for the step's process).
Every step starts with its input out of the page cache (``POSIX_FADV_DONTNEED`` on the input files
before each step): what a previous step left cached, or this VM's background reclaim took away,
then favours no step; the converters drop what they read, and write with O_DIRECT.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from megatron_vrft.checkpoint import assemble  # noqa: E402
from megatron_vrft.checkpoint.atomic import atomic_dir  # noqa: E402
from megatron_vrft.checkpoint.hf_io import write_hf_checkpoint  # noqa: E402
from megatron_vrft.checkpoint.stream import TensorSpec  # noqa: E402
from megatron_vrft.models.qwen2_5_vl import weights as W  # noqa: E402

GIB = 1024**3


def config_3b() -> dict:
    """The released Qwen2.5-VL-3B-Instruct architecture (config.json values)."""
    from transformers import Qwen2_5_VLConfig

    text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=128000,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, dtype="bfloat16")
    return cfg.to_dict()


def make_checkpoint(path: Path) -> None:
    cfg = config_3b()
    shapes = W.hf_shapes(cfg)
    plan = [TensorSpec(n, torch.bfloat16, s) for n, s in shapes.items()]
    gen = torch.Generator().manual_seed(0)

    def tensors():
        for spec in plan:
            yield spec.name, torch.randn(spec.shape, generator=gen, dtype=torch.bfloat16)

    with atomic_dir(path, overwrite=True) as tmp:
        write_hf_checkpoint(tmp, plan, tensors(), max_shard_bytes=4 * GIB)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def _hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def drop_cache(dirs: list[Path]) -> None:
    """Evicts the safetensors files under ``dirs`` from the page cache (clean pages: a hint any
    user may give, no root needed)."""
    for d in dirs:
        for p in d.rglob("*.safetensors"):
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """``(wall seconds, peak RSS GiB)`` of one subprocess.

    Peak RSS is the process's own high-water mark (``VmHWM``), polled every 20 ms until it exits
    (it only grows, so the last reading is the peak up to the final 20 ms). ``ru_maxrss`` from
    ``wait4`` is not used: Linux carries it across ``exec`` from the forking parent.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _hwm_kib(proc.pid) or 0)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return wall, peak * 1024 / GIB


class PlainOutput:
    """The plain alternative to ``assemble._Output`` (same interface): the same chunk filling
    (``assemble._Chunks``), each full chunk written synchronously with ordinary page-cache writes,
    no thread, no O_DIRECT."""

    def __init__(self, path: Path, size: int):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._chunks = assemble._Chunks(mmap.mmap(-1, assemble._CHUNK), self._full)

    def _write(self, view: memoryview) -> None:
        while view.nbytes:
            view = view[os.write(self._fd, view):]

    def _full(self, buf: mmap.mmap) -> mmap.mmap:
        self._write(memoryview(buf))
        return buf

    def put(self, data) -> None:
        self._chunks.put(data)

    def copy(self, fd: int, offset: int, n: int, src: Path) -> None:
        self._chunks.copy(fd, offset, n, src)

    def close(self) -> None:
        try:
            self._write(memoryview(self._chunks.buf)[: self._chunks.pos])
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        os.close(self._fd)


# Runs a converter script with PlainOutput in place of assemble's O_DIRECT writer.
PLAIN_WRITER = f"""
import gc, runpy, sys
gc.disable()
sys.path.insert(0, {str(REPO / "bench")!r})
import megatron_vrft.checkpoint.assemble as A
from bench_convert import PlainOutput
A._Output = PlainOutput
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

COPY = """
import os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
for name in sorted(os.listdir(src)):
    if name.endswith(".safetensors"):
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
        with open(os.path.join(dst, name), "rb+") as f:
            os.fsync(f.fileno())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work-dir", default="/tmp/bench_convert")
    ap.add_argument("--layouts", default="1x1,2x1,2x2", help="comma-separated TPxPP for hf_to_mcore")
    ap.add_argument("--regenerate", action="store_true", help="rewrite the random 3B checkpoint")
    ap.add_argument("--repeat", type=int, default=2,
                    help="rounds of every step; the best wall time is reported (other load on the machine only adds)")
    ap.add_argument("--writers", default="odirect",
                    help="comma-separated output writers to run the converters with: odirect, buffered")
    a = ap.parse_args()
    writers = a.writers.split(",")
    if not set(writers) <= {"odirect", "buffered"}:
        raise SystemExit(f"--writers: unknown writer in {a.writers!r} (odirect, buffered)")

    def converter(script: str) -> dict[str, list[str]]:
        """The command prefix of ``script`` per writer."""
        path = str(REPO / "checkpoint_convert" / script)
        return {"odirect": [sys.executable, path], "buffered": [sys.executable, "-c", PLAIN_WRITER, path]}
    work = Path(a.work_dir)
    hf = work / "hf_3b"
    if a.regenerate or not (hf / "config.json").is_file():
        t0 = time.perf_counter()
        make_checkpoint(hf)
        print(f"generated {hf} in {time.perf_counter() - t0:.0f}s")
    shards = sorted(hf.glob("*.safetensors"))
    total = sum(p.stat().st_size for p in shards) / GIB
    largest = max(p.stat().st_size for p in shards) / GIB
    budget = {}  # label -> peak-RSS target: 1.5 x (largest shard + model size / TP)
    steps = [("copy (baseline)", [sys.executable, "-c", COPY, str(hf), str(work / "copy")], work / "copy")]
    for layout in a.layouts.split(","):
        tp, pp = (int(x) for x in layout.split("x"))
        for w in writers:
            label = f"hf_to_mcore tp={tp} pp={pp}" + (f" [{w}]" if len(writers) > 1 else "")
            budget[label] = 1.5 * (largest + total / tp)
            steps.append((label, converter("hf_to_mcore.py")[w] + [
                "--hf-dir", str(hf), "--out-dir", str(work / "mcore"), "--tp", str(tp), "--pp", str(pp),
                "--no-progress", "--overwrite"], None))
    first_mcore = work / "mcore_first"
    for w in writers:
        steps.append(("mcore_to_hf (first layout)" + (f" [{w}]" if len(writers) > 1 else ""),
                      converter("mcore_to_hf.py")[w] + ["--mcore-dir", str(first_mcore), "--out-dir",
                                                        str(work / "hf_back"), "--no-progress"], work / "hf_back"))
    results: dict[str, list[tuple[float, float]]] = {}
    for rnd in range(a.repeat):
        for label, cmd, out in steps:
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            drop_cache([hf, first_mcore])
            wall, rss = run_measured(cmd)
            if label.startswith("hf_to_mcore") and not first_mcore.exists():
                os.rename(work / "mcore", first_mcore)  # the first layout's output feeds mcore_to_hf
            shutil.rmtree(out or work / "mcore", ignore_errors=True)
            results.setdefault(label, []).append((wall, rss))
            print(f"round {rnd + 1}: {label:<40} {wall:7.1f} s   peak RSS {rss:5.2f} GiB", flush=True)
    shutil.rmtree(first_mcore, ignore_errors=True)

    copy_s = min(w for w, _ in results["copy (baseline)"])
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, torch {torch.__version__}")
    print(f"checkpoint: {len(shards)} shards, {total:.2f} GiB total, largest {largest:.2f} GiB (bf16); "
          f"best of {a.repeat} rounds")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| step | wall s (min / median / max) | x copy (min) | peak RSS GiB | RSS target GiB |")
    print("|---|---|---|---|---|")
    for label, runs in results.items():
        walls, rss = sorted(w for w, _ in runs), max(r for _, r in runs)
        b = f"{budget[label]:.1f}" if label in budget else "-"
        print(f"| {label} | {walls[0]:.1f} / {walls[len(walls) // 2]:.1f} / {walls[-1]:.1f} | "
              f"{walls[0] / copy_s:.2f} | {rss:.2f} | {b} |")


if __name__ == "__main__":
    main()

"""checkpoint_convert/verify.py under torchrun: a tied-embedding, single-KV-head checkpoint converted
at TP=2 and loaded at PP=2 (output layer copied from embed_tokens) matches HF's logits; a corrupted
one fails with exit status 1."""

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from megatron_vrft.checkpoint.convert import convert_hf_to_mcore
from megatron_vrft.checkpoint.mcore_io import rank_dir
from megatron_vrft.runtime import free_port
from megatron_vrft.testing.tiny_qwen import TINY_SHAPES, save_tiny_hf

REPO = Path(__file__).resolve().parents[2]


def _verify(hf, mc, nproc, tp, pp):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", str(free_port()), str(REPO / "checkpoint_convert" / "verify.py"), "--hf-dir", str(hf), "--mcore-dir", str(mc),
           "--tp", str(tp), "--pp", str(pp)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_verify_reshards_and_detects_corruption(tmp_path):
    hf = tmp_path / "hf"
    save_tiny_hf(hf, seed=0, **TINY_SHAPES["tied_mqa"])
    mc = convert_hf_to_mcore(hf, tmp_path / "mc", tp=2, pp=1, progress=False)
    r = _verify(hf, mc, nproc=2, tp=1, pp=2)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0, r.stdout + r.stderr
    assert last.startswith("max_abs_logit_diff=") and float(last.split("=")[1]) < 1e-5

    path = mc / rank_dir(1, 0) / "model.safetensors"
    sd = load_file(path)
    sd["language_model.decoder.layers.0.mlp.linear_fc2.weight"] *= 3.0
    save_file(sd, path, metadata={"format": "pt"})
    r = _verify(hf, mc, nproc=1, tp=1, pp=1)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 1 and float(last.split("=")[1]) > 1e-3, r.stdout + r.stderr


def test_user_errors_are_one_line(tmp_path):
    """A TP that does not divide the heads, and a TP x PP the world size cannot hold: one ``error:``
    line on stderr, exit status 2, no traceback (a plain ``python`` run is a world of one)."""
    hf = tmp_path / "hf"
    save_tiny_hf(hf, seed=0, **TINY_SHAPES["tied_mqa"])
    mc = convert_hf_to_mcore(hf, tmp_path / "mc", tp=1, pp=1, progress=False)
    script = str(REPO / "checkpoint_convert" / "verify.py")
    expected = {"3": "error: tensor-parallel size 3 does not divide text_config.num_attention_heads=4",
                "2": "error: world size 1 (torchrun --nproc-per-node) is not a multiple of --tp 2 x --pp 1"}
    for tp, line in expected.items():
        r = subprocess.run([sys.executable, script, "--hf-dir", str(hf), "--mcore-dir", str(mc), "--tp", tp],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [line], r.stderr

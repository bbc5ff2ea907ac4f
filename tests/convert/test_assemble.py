"""The converters' byte-level data path (``checkpoint/assemble.py``): reads of whole runs, gathers of
per-row slices, chunk boundaries, O_DIRECT output and its buffered fallbacks all write exactly the
tensors of the in-memory weight map."""

import errno
import fcntl
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from megatron_vrft.checkpoint import assemble
from megatron_vrft.checkpoint.atomic import CheckpointError
from megatron_vrft.checkpoint.convert import convert_hf_to_mcore, convert_mcore_to_hf
from megatron_vrft.checkpoint.mcore_io import rank_dir
from megatron_vrft.checkpoint.stream import TensorSpec
from megatron_vrft.models.qwen2_5_vl import weights as W
from megatron_vrft.testing.tiny_qwen import TINY_SHAPES, save_tiny_hf


_REAL_OPEN, _REAL_WRITE = os.open, os.write


def _open_refused(path, flags, *args):
    """``os.open`` of a filesystem without O_DIRECT (tmpfs)."""
    if flags & assemble._O_DIRECT:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return _REAL_OPEN(path, flags, *args)


def _write_refused(fd, data):
    """``os.write`` of a filesystem that opens files with O_DIRECT but refuses direct writes."""
    if fcntl.fcntl(fd, fcntl.F_GETFL) & assemble._O_DIRECT:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return _REAL_WRITE(fd, data)


# every way write_assembled can move bytes, forced one at a time
MODES = {
    "reads": {"MIN_RUN": 0},
    "gather": {"MIN_RUN": 1 << 40},
    "small_chunks": {"MIN_RUN": 0, "_CHUNK": 8192},  # runs, gathers and the header cross chunk ends
    "buffered": {"_O_DIRECT": 0},
    "direct_open_refused": {"open": _open_refused},
    "direct_write_refused": {"write": _write_refused},
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "untied_gqa"
    save_tiny_hf(d, seed=0, **TINY_SHAPES["untied_gqa"])  # vocab 129: TP=2 pads a zero row
    return d


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_copy_path_writes_the_mapped_tensors(hf_dir, tmp_path, monkeypatch, mode):
    tp, pp = 2, 2
    reference = convert_hf_to_mcore(hf_dir, tmp_path / "ref", tp=tp, pp=pp, progress=False)
    reference_back = convert_mcore_to_hf(reference, tmp_path / "ref_back", progress=False)
    for name, value in MODES[mode].items():
        monkeypatch.setattr(os if name in ("open", "write") else assemble, name, value)
    mc = convert_hf_to_mcore(hf_dir, tmp_path / "mc", tp=tp, pp=pp, progress=False)
    back = convert_mcore_to_hf(mc, tmp_path / "back", progress=False)
    assert _files(mc) == _files(reference) and _files(back) == _files(reference_back)
    hf = load_file(hf_dir / "model.safetensors")
    cfg = W.as_hf_config(json.loads((hf_dir / "config.json").read_text()))
    for t in range(tp):
        for p in range(pp):
            want = dict(W.hf_to_mcore(lambda n: hf[n], cfg, tp_rank=t, tp_size=tp, pp_rank=p, pp_size=pp))
            got = load_file(mc / rank_dir(t, p) / "model.safetensors")
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert load_file(back / "model.safetensors").keys() == hf.keys()
    assert all(torch.equal(v, hf[k]) for k, v in load_file(back / "model.safetensors").items())


def test_family_index_units_and_runs(tmp_path):
    """Hand-computed runs: a [4, 6] bf16 tensor at file offset 100, split by columns for TP=2."""
    files = assemble.FileTable()
    spec = TensorSpec("w", torch.bfloat16, (4, 6))
    fam = assemble.FamilyIndex(files, [(tmp_path / "a", 100, spec)], blocks=2)
    assert fam.unit == 6 and fam.inputs[0].tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]
    out, pieces = fam.entry("w1", (4, 3), fam.inputs[0][:, 1:])  # rank 1's columns 3..5
    assert pieces.offset.tolist() == [106, 118, 130, 142] and pieces.length.tolist() == [6] * 4
    _, whole = fam.entry("w", (4, 6), fam.inputs[0])  # both blocks of every row: one run
    assert (whole.file.tolist(), whole.offset.tolist(), whole.length.tolist()) == ([0], [100], [48])
    padded = torch.cat([fam.inputs[0], torch.zeros(1, 2, dtype=torch.int64)])  # a zero (padding) row
    _, pad = fam.entry("p", (5, 6), padded)
    assert pad.file.tolist() == [0, -1] and pad.length.tolist() == [48, 12]
    with pytest.raises(CheckpointError, match="byte plan of bad has 48 bytes"):
        fam.entry("bad", (5, 6), fam.inputs[0])


def _open_files():
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return fds


def test_a_failing_output_leaves_no_writer_thread_nor_descriptor(hf_dir, tmp_path, monkeypatch):
    """Rank 0's file of a TP=2 stage hits a full disk; its error surfaces at close, and rank 1's file
    (written in lockstep) must still be closed and its writer thread stopped."""
    import threading

    def write_full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f"{rank_dir(0, 0)}/model.safetensors"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _REAL_WRITE(fd, data)

    monkeypatch.setattr(os, "write", write_full)
    with pytest.raises(OSError, match="No space left on device"):
        convert_hf_to_mcore(hf_dir, tmp_path / "mc", tp=2, pp=1, progress=False)
    assert not [t for t in threading.enumerate() if t.name == "assemble-writer"]
    assert not [p for p in _open_files().values() if str(tmp_path) in p]
    assert not list(tmp_path.iterdir())

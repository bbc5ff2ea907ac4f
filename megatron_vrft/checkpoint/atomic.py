"""Atomic output directories and the streaming safetensors writer shared by every checkpoint writer.

``atomic_dir(out)`` hands out ``OUT.tmp-<pid>``; when the block succeeds every file in it has been
fsynced, the optional ``COMPLETE`` marker is written last, and the directory is renamed to ``OUT``
(so a reader never sees a half-written ``OUT``). On any exception the temp dir is removed.

``write_safetensors(path, plan, tensors)`` writes a valid safetensors file while holding ONE tensor
at a time: the header (names, dtypes, shapes, offsets) is known in advance from ``plan``, then the
tensors are streamed in plan order. ``safetensors.torch.save_file`` needs every tensor of a file in
memory at once, which for a 7B rank file is several GB; this is the reason for a writer of our own
(the files are read back with the ``safetensors`` library everywhere).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

__all__ = ["CheckpointError", "COMPLETE", "TensorSpec", "atomic_dir", "is_complete", "write_safetensors"]

COMPLETE = "COMPLETE"


class CheckpointError(ValueError):
    """A checkpoint directory/file that cannot be read or written as asked (message names it)."""


_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
ST_TO_TORCH = {v: k for k, v in _ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


@contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = False, marker: bool = True) -> Iterator[Path]:
    """Yields a fresh temp dir next to ``out``; on success it becomes ``out`` (see module doc).

    An existing non-empty ``out`` is an error unless ``overwrite`` (then it is replaced only after
    the new one is complete).
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        state = "a complete checkpoint" if is_complete(out) else "not empty"
        raise CheckpointError(f"output directory {out} already exists and is {state}; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if marker:
            with open(tmp / COMPLETE, "w") as f:
                f.write("ok\n")
                f.flush()
                os.fsync(f.fileno())
        for sub in [p for p in tmp.rglob("*") if p.is_dir()] + [tmp]:
            _fsync_dir(sub)
        if out.exists():
            old = out.parent / f"{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _as_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def write_safetensors(
    path: str | Path,
    plan: list[TensorSpec],
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    metadata: dict[str, str] | None = None,
    on_tensor: Callable[[int], None] | None = None,
) -> int:
    """Streams ``tensors`` (same names/dtypes/shapes and order as ``plan``) into a safetensors file.

    Returns the bytes of tensor data written. The file is fsynced. A tensor that disagrees with
    its plan entry raises ``CheckpointError`` naming it.
    """
    header: dict = {}
    offset = 0
    for s in plan:
        if s.dtype not in _ST_DTYPES:
            raise CheckpointError(f"tensor {s.name}: dtype {s.dtype} cannot be stored in safetensors")
        header[s.name] = {"dtype": _ST_DTYPES[s.dtype], "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the safetensors library does
    done = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        it = iter(tensors)
        for spec in plan:
            name, t = next(it, (None, None))
            if name != spec.name or t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
                got = "nothing" if name is None else f"{name} {t.dtype} {list(t.shape)}"
                raise CheckpointError(f"{path}: expected tensor {spec.name} {spec.dtype} {list(spec.shape)}, got {got}")
            f.write(_as_bytes(t))
            done += spec.nbytes
            if on_tensor is not None:
                on_tensor(spec.nbytes)
        extra = next(it, None)
        if extra is not None:
            raise CheckpointError(f"{path}: tensor {extra[0]} is not in the file plan")
        f.flush()
        os.fsync(f.fileno())
    return done

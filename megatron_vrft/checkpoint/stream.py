"""Safetensors files read and written one tensor at a time.

Why not only the ``safetensors`` library: ``save_file`` needs every tensor of a file in memory at
once (several GB for one rank of a 7B model), and ``safe_open`` maps whole files, so every page a
conversion touches stays in the process's resident set until the file is closed (the full input
checkpoint, for a converter that reads it all). The format is simple and fixed (8-byte header
length, JSON header of dtype/shape/byte offsets, raw little-endian data), so:

- ``SafetensorsWriter(path, plan)`` / ``write_safetensors(path, plan, tensors)`` write the header
  from ``plan`` (``safetensors_header``: known in advance from meta tensors), then append the
  tensors as they are produced;
- ``SafetensorsFile(path)`` parses the header; ``get(name)`` maps just that tensor's bytes
  (zero-copy; unmapped when the tensor is freed) and ``locate(name)`` gives their file offset
  (the converters copy them without reading them, ``checkpoint/assemble.py``).
Files written here load with the library (``load_file`` / ``from_pretrained``; see the tests), and
files written by the library read here.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from megatron_vrft.checkpoint.atomic import CheckpointError

__all__ = ["TensorSpec", "SafetensorsFile", "SafetensorsWriter", "safetensors_header", "write_safetensors",
           "ST_TO_TORCH"]

_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
ST_TO_TORCH = {v: k for k, v in _ST_DTYPES.items()}
_MAX_HEADER = 100 * 1024**2  # the library's own limit


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class SafetensorsFile:
    """Header of one safetensors file (``specs``) and per-tensor reads (``get``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > _MAX_HEADER:
                    raise ValueError(f"header length {n} is not plausible")
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error) as e:
            raise CheckpointError(f"cannot read safetensors file {self.path}: {e}") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + n
        self._size = self.path.stat().st_size
        self.specs: dict[str, TensorSpec] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        for name, entry in header.items():
            dtype = ST_TO_TORCH.get(entry.get("dtype"))
            if dtype is None:
                raise CheckpointError(f"tensor {name} in {self.path} has unsupported dtype {entry.get('dtype')}")
            spec = TensorSpec(name, dtype, tuple(entry["shape"]))
            begin, end = entry["data_offsets"]
            if end - begin != spec.nbytes or self._data_start + end > self._size:
                raise CheckpointError(f"tensor {name} in {self.path}: byte range [{begin}, {end}) does not fit "
                                      f"its shape/dtype or the file (truncated?)")
            self.specs[name] = spec
            self._offsets[name] = (begin, end)

    def keys(self) -> list[str]:
        return list(self.specs)

    def locate(self, name: str) -> int:
        """Absolute file offset of tensor ``name``'s first byte (``specs[name].nbytes`` follow)."""
        return self._data_start + self._offsets[name][0]

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name``, backed by a private mapping of just its bytes (pre-faulted): no copy is
        made, and the pages leave the process's memory when the tensor is freed."""
        spec, (begin, end) = self.specs[name], self._offsets[name]
        if end == begin:
            return torch.empty(spec.shape, dtype=spec.dtype)
        start = self._data_start + begin
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), end - begin + start - aligned, offset=aligned,
                               flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0),
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)
        raw = torch.frombuffer(mapped, dtype=torch.uint8, offset=start - aligned, count=end - begin)
        return raw.view(spec.dtype).reshape(spec.shape)


def _as_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def safetensors_header(plan: list[TensorSpec], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length + JSON header of a file holding ``plan``'s tensors back to back, in order."""
    header: dict = {}
    offset = 0
    for s in plan:
        if s.dtype not in _ST_DTYPES:
            raise CheckpointError(f"tensor {s.name}: dtype {s.dtype} cannot be stored in safetensors")
        header[s.name] = {"dtype": _ST_DTYPES[s.dtype], "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the safetensors library does
    return struct.pack("<Q", len(raw)) + raw


class SafetensorsWriter:
    """Writes one safetensors file whose tensors are all declared up front in ``plan``.

    ``add(name, tensor)`` appends the next tensor (it must match the next plan entry: name, dtype,
    shape); ``close()`` checks that the plan is exhausted and fsyncs. For tensors that exist in
    memory (a live model's state); converters copy bytes between files instead (``assemble``).
    """

    def __init__(self, path: str | Path, plan: list[TensorSpec], *, metadata: dict[str, str] | None = None,
                 on_tensor: Callable[[int], None] | None = None):
        header = safetensors_header(plan, metadata)
        self.path, self.nbytes = Path(path), sum(s.nbytes for s in plan)
        self._plan, self._next, self._on_tensor = plan, 0, on_tensor
        self._f = open(self.path, "wb")
        self._f.write(header)

    def add(self, name: str, t: torch.Tensor) -> None:
        spec = self._plan[self._next] if self._next < len(self._plan) else None
        if spec is None:
            raise CheckpointError(f"{self.path}: tensor {name} is not in the file plan")
        if name != spec.name or t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
            raise CheckpointError(f"{self.path}: expected tensor {spec.name} {spec.dtype} {list(spec.shape)}, "
                                  f"got {name} {t.dtype} {list(t.shape)}")
        self._f.write(_as_bytes(t))
        self._next += 1
        if self._on_tensor is not None:
            self._on_tensor(spec.nbytes)

    def abort(self) -> None:
        """Closes the file after a failure (the caller's temp dir is removed with it)."""
        self._f.close()

    def close(self) -> None:
        try:
            if self._next != len(self._plan):
                raise CheckpointError(f"{self.path}: expected tensor {self._plan[self._next].name}, got nothing")
            self._f.flush()
            os.fsync(self._f.fileno())
        finally:
            self._f.close()


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
    writer = SafetensorsWriter(path, plan, metadata=metadata, on_tensor=on_tensor)
    try:
        for name, t in tensors:
            writer.add(name, t)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.nbytes

"""Safetensors files assembled from byte ranges of other safetensors files: the converters' data path.

Every tensor a converter writes is a rearrangement of input tensors' bytes in the same dtype: a TP
split along dim 0, vocabulary padding, the gate/up fuse and the QKV interleaves move whole rows; a
split or merge along dim 1 (row-parallel weights) moves one slice per row. So the weight map is
applied once to small *index tensors* (``FamilyIndex``: one int64 per row, or per TP block of a
row, naming where that unit's bytes live) instead of to the data, which gives for every output
tensor the list of source byte ranges (``FamilyIndex.entry`` -> ``Pieces``). ``write_assembled``
then writes the header and moves the bytes without turning them into tensors:

- runs of >= ``MIN_COPY_RUN`` bytes on average go through ``os.copy_file_range``: a kernel-side
  copy from page cache to page cache (a reflink where the filesystem can), as ``cp`` does; where
  the kernel or filesystem refuses it (e.g. across filesystems on older kernels) ``sendfile``,
  then ``pread``/``write``;
- short runs (one per row: row-parallel splits and merges), where one syscall per run would cost
  more than the bytes, are gathered by numpy from a read-only shared mapping of the source range
  (no copy of the pages into the process) into a buffer written with one ``write`` per chunk;
- zero units (vocabulary padding rows) are written as zeros.

The bytes written are exactly those of the converted tensors (tests compare with the in-memory
map). Files are not fsynced here: ``atomic_dir`` fsyncs every file once, at the end, so the
disk keeps writing one file back while the next one is assembled.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from megatron_vrft.checkpoint.atomic import CheckpointError
from megatron_vrft.checkpoint.stream import TensorSpec, safetensors_header

__all__ = ["MIN_COPY_RUN", "FileTable", "FamilyIndex", "Pieces", "write_assembled"]

# Below this mean run length a gather beats one copy_file_range per run (measured: ~10 us per call,
# so 2-11 KiB row slices copy at a fraction of the disk's speed).
MIN_COPY_RUN = 64 * 1024
_CHUNK = 64 * 1024**2  # bytes gathered per write (bounds the buffer for huge row-parallel weights)
_ZEROS = bytes(8 * 1024**2)
# errnos meaning "this copy method is not available here", not "the copy failed"
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


class FileTable:
    """Source files by small integer id (what ``Pieces`` store per run)."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self._ids: dict[Path, int] = {}

    def id(self, path: Path) -> int:
        if path not in self._ids:
            self._ids[path] = len(self.paths)
            self.paths.append(path)
        return self._ids[path]


@dataclass(frozen=True)
class Pieces:
    """Where the bytes of one output tensor come from: runs ``(file id, absolute offset, length)``
    in order (file id -1: zeros), each a multiple of ``unit`` bytes."""

    unit: int
    file: np.ndarray  # int64 [runs]
    offset: np.ndarray  # int64 [runs]
    length: np.ndarray  # int64 [runs]

    @property
    def nbytes(self) -> int:
        return int(self.length.sum())

    @property
    def strided(self) -> bool:
        """Many short runs: gather them instead of one syscall each."""
        return len(self.length) * MIN_COPY_RUN > self.nbytes

    def units(self) -> tuple[np.ndarray, np.ndarray]:
        """``(file id, offset)`` of every ``unit``-sized piece, in output order."""
        counts = self.length // self.unit
        first = np.repeat(np.cumsum(counts) - counts, counts)
        within = (np.arange(int(counts.sum())) - first) * self.unit
        return np.repeat(self.file, counts), np.repeat(self.offset, counts) + within


class FamilyIndex:
    """Index tensors standing in for the input tensors of one parameter family.

    ``inputs[j]`` has the shape of input j with every dim after the first folded into ``blocks``
    units (1-D inputs: one unit per element), and holds ``1 + global unit number``; a unit is a
    contiguous range of ``unit`` bytes in a source file. Any rearrangement of rows / row blocks
    (``weights.split_param`` / ``merge_param``, zero padding included: 0 = a zero unit) applied to
    these gives an index tensor whose flattened values are the output's units in byte order;
    ``entry`` turns it into source runs.
    """

    def __init__(self, files: FileTable, sources: list[tuple[Path, int, TensorSpec]], blocks: int):
        names = [spec.name for _, _, spec in sources]
        if len({spec.dtype for _, _, spec in sources}) > 1:
            raise CheckpointError(f"tensors {names} of one parameter family have different dtypes "
                                  f"{[str(spec.dtype) for _, _, spec in sources]}; the converters keep dtypes "
                                  "and cannot fuse these")
        self.inputs: list[torch.Tensor] = []
        units, files_, starts, bases = [], [], [], [0]
        for path, start, spec in sources:
            per_row = math.prod(spec.shape[1:]) if len(spec.shape) > 1 else 1
            split = blocks if len(spec.shape) > 1 else 1
            n = spec.shape[0] * split
            ids = torch.arange(bases[-1] + 1, bases[-1] + 1 + n)
            self.inputs.append(ids.reshape(spec.shape[0], split) if len(spec.shape) > 1 else ids)
            units.append(per_row // split * spec.dtype.itemsize)
            files_.append(files.id(path))
            starts.append(start)
            bases.append(bases[-1] + n)
        if len(set(units)) != 1:
            raise CheckpointError(f"tensors {names} of one parameter family do not share a row size")
        self.unit, self.dtype = units[0], sources[0][2].dtype
        self._file, self._start, self._base = np.array(files_), np.array(starts), np.array(bases[:-1])

    def entry(self, name: str, shape: tuple[int, ...], index: torch.Tensor) -> tuple[TensorSpec, Pieces]:
        """``(spec, source runs)`` of output tensor ``name`` of ``shape``, whose index tensor (computed
        from ``inputs``) is ``index``. A byte count that disagrees with ``shape`` is a bug in the
        map's stand-ins, reported while planning (before anything is written)."""
        spec = TensorSpec(name, self.dtype, tuple(shape))
        ids = index.reshape(-1).numpy() - 1
        src = np.searchsorted(self._base, ids, side="right") - 1
        zero = ids < 0
        file = np.where(zero, -1, self._file[src])
        # zero units get consecutive pseudo offsets so that a padding block becomes one run
        offset = np.where(zero, np.arange(len(ids)) * self.unit,
                          self._start[src] + (ids - self._base[src]) * self.unit)
        brk = np.ones(len(ids), dtype=bool)
        brk[1:] = (file[1:] != file[:-1]) | (offset[1:] != offset[:-1] + self.unit)
        starts = np.flatnonzero(brk)
        length = np.diff(np.append(starts, len(ids))) * self.unit
        pieces = Pieces(self.unit, file[starts], offset[starts], length)
        if pieces.nbytes != spec.nbytes:
            raise CheckpointError(f"byte plan of {name} has {pieces.nbytes} bytes, {list(shape)} needs {spec.nbytes}")
        return spec, pieces


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view):]


class _Copier:
    """Kernel-side range copy with fallbacks: ``copy_file_range`` (Linux >= 4.5; same filesystem
    before 5.3), else ``sendfile`` (any two files), else ``pread``/``write``. Falls back once, on
    the first errno that means "not supported here", and keeps that method."""

    def __init__(self) -> None:
        self._methods: list[Callable[[int, int, int, int], int]] = [self._cfr, self._sendfile, self._rw]

    @staticmethod
    def _cfr(src: int, dst: int, offset: int, n: int) -> int:
        return os.copy_file_range(src, dst, n, offset)

    @staticmethod
    def _sendfile(src: int, dst: int, offset: int, n: int) -> int:
        return os.sendfile(dst, src, offset, min(n, 1 << 30))

    @staticmethod
    def _rw(src: int, dst: int, offset: int, n: int) -> int:
        return os.write(dst, os.pread(src, min(n, _CHUNK), offset))

    def __call__(self, src: int, dst: int, offset: int, n: int, where: Path) -> None:
        while n:
            try:
                done = self._methods[0](src, dst, offset, n)
            except (OSError, AttributeError) as e:
                if len(self._methods) > 1 and (isinstance(e, AttributeError) or e.errno in _UNSUPPORTED):
                    self._methods.pop(0)
                    continue
                raise
            if done == 0:
                raise CheckpointError(f"{where} ended at byte {offset} while it was being read (truncated?)")
            offset += done
            n -= done


def _gather(out: int, fds: dict[int, int], unit: int, file: np.ndarray, offset: np.ndarray) -> None:
    """Writes the ``unit``-byte pieces at ``(file, offset)`` in order, ``_CHUNK`` bytes at a time."""
    per = max(1, _CHUNK // unit)
    for a in range(0, len(file), per):
        f, o = file[a : a + per], offset[a : a + per]
        buf = np.zeros((len(f), unit), dtype=np.uint8)
        for fid in np.unique(f[f >= 0]):
            sel = f == fid
            lo, hi = int(o[sel].min()), int(o[sel].max()) + unit
            base = lo - lo % mmap.ALLOCATIONGRANULARITY
            # shared + read-only: the page cache's pages are mapped, not copied; unmapped right after
            mm = mmap.mmap(fds[int(fid)], hi - base, offset=base,
                           flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)
            try:  # one statement: no view of ``mm`` outlives it, so ``close`` may unmap
                buf[sel] = sliding_window_view(np.frombuffer(mm, dtype=np.uint8), unit)[o[sel] - base]
            finally:
                mm.close()
        _write_all(out, buf)


def write_assembled(path: Path, entries: list[tuple[TensorSpec, Pieces]], files: FileTable, *,
                    metadata: dict[str, str] | None = None, on_bytes: Callable[[int], None] | None = None) -> None:
    """Writes safetensors file ``path`` holding ``entries`` (specs in order, bytes from ``Pieces``).

    Not fsynced (``atomic_dir`` does it)."""
    copy = _Copier()
    fds: dict[int, int] = {}
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        _write_all(out, safetensors_header([spec for spec, _ in entries], metadata))
        for spec, pc in entries:
            for fid in np.unique(pc.file[pc.file >= 0]):
                if int(fid) not in fds:
                    fds[int(fid)] = os.open(files.paths[fid], os.O_RDONLY)
            if pc.strided:
                _gather(out, fds, pc.unit, *pc.units())
            else:
                for fid, off, n in zip(pc.file.tolist(), pc.offset.tolist(), pc.length.tolist()):
                    if fid < 0:
                        for k in range(0, n, len(_ZEROS)):
                            _write_all(out, _ZEROS[: min(len(_ZEROS), n - k)])
                    else:
                        copy(fds[fid], out, off, n, files.paths[fid])
            if on_bytes is not None:
                on_bytes(spec.nbytes)
    finally:
        os.close(out)
        for fd in fds.values():
            os.close(fd)

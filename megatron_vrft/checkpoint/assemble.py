"""Safetensors files assembled from byte ranges of other safetensors files: the converters' data path.

Every tensor a converter writes is a rearrangement of input tensors' bytes in the same dtype: a TP
split along dim 0, vocabulary padding, the gate/up fuse and the QKV interleaves move whole rows; a
split or merge along dim 1 (row-parallel weights) moves one slice per row. So the weight map is
applied once to small *index tensors* (``FamilyIndex``: one int64 per row, or per TP block of a
row, naming where that unit's bytes live) instead of to the data, which gives for every output
tensor the list of source byte ranges (``FamilyIndex.entry`` -> ``Pieces``). ``write_assembled``
then writes the header and moves the bytes without turning them into tensors:

- runs of >= ``MIN_RUN`` bytes on average are read with ``preadv`` straight into the output
  buffer (kernel readahead on the input side);
- short runs (one per row: row-parallel splits and merges), where a syscall per run would cost
  more than the bytes, are gathered by numpy from a read-only shared mapping of the source range
  (the page cache's pages are mapped, not copied);
- zero units (vocabulary padding rows) are written as zeros;
- the TP ranks' files of a stage are written in lockstep, so input bytes several ranks need are
  read once, and consumed input is dropped from the page cache (``_forget``);
- the output leaves through page-aligned 64 MiB buffers written with ``O_DIRECT`` by a
  background thread (``_Output``), so reading overlaps writing and the output does not go through
  the page cache at all.

Why not ``copy_file_range`` / ``sendfile`` (kernel-side copies, what ``cp`` does): they copy into
the page cache, and allocating, dirtying, writing back and reclaiming 7 GiB of page cache is
where a buffered copy spends its time (on the benchmark VM 70-90% of ``cp``'s wall time for the
3B checkpoint is kernel CPU, against ~0.3 s of kernel time to write the same 7 GiB with
``O_DIRECT``); a converter never reads its output back, so the cache buys nothing.

The bytes written are exactly those of the converted tensors (tests compare with the in-memory
map for every path). Files are not fsynced here: ``atomic_dir`` fsyncs every file once, before
the ``COMPLETE`` marker.
"""

from __future__ import annotations

import errno
import fcntl
import math
import mmap
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from megatron_vrft.checkpoint.atomic import CheckpointError
from megatron_vrft.checkpoint.stream import TensorSpec, safetensors_header

__all__ = ["MIN_RUN", "FileTable", "FamilyIndex", "Pieces", "write_assembled"]

# Below this mean run length one gather beats a read per run (per-row slices of row-parallel
# weights are 1-11 KiB: a syscall each would cost more than their bytes).
MIN_RUN = 64 * 1024
_CHUNK = 64 * 1024**2  # output buffer size: large sequential writes, bounded memory
_BUFFERS = 3  # one being filled, up to two queued for / in the writer thread
_ALIGN = 4096  # O_DIRECT alignment of buffers, offsets and lengths (logical block size <= 4 KiB)
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux; elsewhere buffered writes
_ZEROS = memoryview(bytes(8 * 1024**2))


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
        return len(self.length) * MIN_RUN > self.nbytes

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


class _Chunks:
    """Fills ``_CHUNK``-sized buffers front to back; ``full(buf)`` takes each full one and returns the
    buffer to fill next. The filling half of an output writer (``_Output``; bench_convert's plain one)."""

    def __init__(self, buf: mmap.mmap, full: Callable[[mmap.mmap], mmap.mmap]):
        self.buf, self.pos, self._full = buf, 0, full

    def _advance(self, k: int) -> None:
        self.pos += k
        if self.pos == _CHUNK:
            self.buf, self.pos = self._full(self.buf), 0

    def put(self, data) -> None:
        """Appends a bytes-like object."""
        view = memoryview(data).cast("B")
        while view.nbytes:
            k = min(view.nbytes, _CHUNK - self.pos)
            self.buf[self.pos : self.pos + k] = view[:k]
            view = view[k:]
            self._advance(k)

    def copy(self, fd: int, offset: int, n: int, src: Path) -> None:
        """Appends ``n`` bytes of file ``fd`` from ``offset``, read straight into the chunk buffer."""
        while n:
            k = min(n, _CHUNK - self.pos)
            got = os.preadv(fd, [memoryview(self.buf)[self.pos : self.pos + k]], offset)
            if got == 0:
                raise CheckpointError(f"{src} ended at byte {offset} while it was being read (truncated?)")
            offset += got
            n -= got
            self._advance(got)


class _Output:
    """One output file written front to back through ``_CHUNK``-sized page-aligned buffers, each
    written by a background thread (reading the next runs overlaps the disk write) with
    ``O_DIRECT``. Where the filesystem refuses ``O_DIRECT`` at open (tmpfs) or at the first write
    (some network filesystems) the same buffers go through the page cache instead. The last chunk
    is padded to the alignment ``O_DIRECT`` needs, and the file truncated to ``size``."""

    def __init__(self, path: Path, size: int):
        self._size = size
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o666)
        except OSError as e:
            if not _O_DIRECT or e.errno != errno.EINVAL:
                raise
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._free: queue.Queue = queue.Queue()
        self._full: queue.Queue = queue.Queue()
        for _ in range(_BUFFERS):
            self._free.put(mmap.mmap(-1, _CHUNK))  # anonymous mappings are page-aligned
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_chunks, name="assemble-writer", daemon=True)
        self._thread.start()
        self._chunks = _Chunks(self._free.get(), self._next_chunk)

    def _write_chunks(self) -> None:
        while (job := self._full.get()) is not None:
            buf, n = job
            try:
                if self._error is None:
                    self._write(memoryview(buf)[:n])
            except BaseException as e:  # noqa: BLE001 - re-raised in the filling thread
                self._error = e
            self._free.put(buf)

    def _write(self, view: memoryview) -> None:
        while view.nbytes:
            try:
                view = view[os.write(self._fd, view):]
            except OSError as e:
                flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                if e.errno != errno.EINVAL or not flags & _O_DIRECT:
                    raise
                fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~_O_DIRECT)  # opened, but direct writes refused

    def _next_chunk(self, buf: mmap.mmap) -> mmap.mmap:
        self._full.put((buf, _CHUNK))
        nxt = self._free.get()
        if self._error is not None:
            raise self._error
        return nxt

    def put(self, data) -> None:
        self._chunks.put(data)

    def copy(self, fd: int, offset: int, n: int, src: Path) -> None:
        self._chunks.copy(fd, offset, n, src)

    def close(self) -> None:
        """Writes the padded last chunk, waits for the writer, truncates to ``size``, closes."""
        try:
            try:
                buf, pos = self._chunks.buf, self._chunks.pos
                end = -(-pos // _ALIGN) * _ALIGN
                buf[pos:end] = bytes(end - pos)
                self._full.put((buf, end))
            finally:
                self._full.put(None)
                self._thread.join()
            if self._error is not None:
                raise self._error
            os.ftruncate(self._fd, self._size)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        """Stops the writer and closes the file after a failure (the caller removes the temp dir)."""
        try:
            self._full.put(None)
            self._thread.join()
        finally:
            os.close(self._fd)


def _forget(fd: int, offset: int, n: int) -> None:
    """Drops input bytes that every output has consumed from the page cache: on the benchmark VM,
    reading 7 GiB into ever new page-cache pages took ~15 s of kernel CPU, against ~3 s with the
    pages of consumed input recycled; and a converter reads nearly every input byte once."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, n, os.POSIX_FADV_DONTNEED)


def _gather(out: _Output, fds: dict[int, int], pieces: Pieces,
            scratch: tuple[np.ndarray, np.ndarray]) -> list[tuple[int, int, int]]:
    """Appends ``pieces`` unit by unit, gathered in steps of ``scratch[0]``'s size from read-only
    shared mappings of the source ranges (the page cache's pages are mapped, not copied); returns
    the ``(fd, offset, length)`` ranges it mapped.

    The units of one source tensor lie at ``start + k * unit``, so each (file, offset % unit)
    group is a contiguous ``[rows, unit]`` array to take rows from; ``np.take`` with ``out`` (and
    ``mode="clip"``, which does not buffer ``out``) writes into the reused scratch buffers: fresh
    64 MiB temporaries per step cost more than the copy itself on the benchmark VM."""
    file, offset = pieces.units()
    unit = pieces.unit
    gathered, staged = scratch
    mapped = []
    per = max(1, len(gathered) // unit)
    for a in range(0, len(file), per):
        f, o = file[a : a + per], offset[a : a + per]
        buf = gathered[: len(f) * unit].reshape(len(f), unit)
        buf[f < 0] = 0
        for fid, phase in sorted({(int(x), int(y)) for x, y in zip(f[f >= 0], o[f >= 0] % unit)}):
            sel = (f == fid) & (o % unit == phase)
            lo, hi = int(o[sel].min()), int(o[sel].max()) + unit
            base = lo - lo % mmap.ALLOCATIONGRANULARITY
            mm = mmap.mmap(fds[fid], hi - base, offset=base,
                           flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)
            rows = np.frombuffer(mm, dtype=np.uint8, count=hi - lo, offset=lo - base).reshape(-1, unit)
            if sel.all():  # one source (TP splits): straight into the output rows
                np.take(rows, (o - lo) // unit, axis=0, out=buf, mode="clip")
            else:  # rows interleaved from several tensors or files (merges of TP shards)
                part = staged[: int(sel.sum()) * unit].reshape(-1, unit)
                np.take(rows, (o[sel] - lo) // unit, axis=0, out=part, mode="clip")
                buf[sel] = part
            del rows  # the last view of ``mm``: it may be unmapped now (on an error, the GC does it)
            mm.close()
            mapped.append((fds[fid], base, hi - base))
        out.put(buf)
    return mapped


def _copy_runs(out: _Output, fds: dict[int, int], pieces: Pieces, files: FileTable) -> list[tuple[int, int, int]]:
    """Appends ``pieces`` run by run (zeros for padding); returns the ``(fd, offset, length)`` read."""
    read = []
    for fid, off, n in zip(pieces.file.tolist(), pieces.offset.tolist(), pieces.length.tolist()):
        if fid < 0:
            for k in range(0, n, len(_ZEROS)):
                out.put(_ZEROS[: min(len(_ZEROS), n - k)])
        else:
            out.copy(fds[fid], off, n, files.paths[fid])
            read.append((fds[fid], off, n))
    return read


def write_assembled(outputs: list[tuple[Path, dict[str, str] | None, list[tuple[TensorSpec, Pieces]]]],
                    files: FileTable, *, on_bytes: Callable[[int], None] | None = None) -> None:
    """Writes safetensors files ``[(path, header metadata, [(spec, pieces)] in file order)]``.

    The files are written in lockstep, tensor i of each then tensor i + 1, so they must hold as many
    tensors (the TP ranks of one pipeline stage do): input bytes several of them use (replicated
    tensors, the rows of a row-parallel weight) are read once, then dropped from the page cache
    (``_forget``). Not fsynced (``atomic_dir`` does it)."""
    opened: list[_Output] = []
    fds: dict[int, int] = {}
    try:
        for path, metadata, entries in outputs:
            header = safetensors_header([spec for spec, _ in entries], metadata)
            opened.append(_Output(path, len(header) + sum(spec.nbytes for spec, _ in entries)))
            opened[-1].put(header)
        scratch = (np.empty(_CHUNK, dtype=np.uint8), np.empty(_CHUNK, dtype=np.uint8))  # reused by _gather
        for row in zip(*(entries for _, _, entries in outputs), strict=True):
            read: list[tuple[int, int, int]] = []
            for out, (spec, pc) in zip(opened, row):
                for fid in np.unique(pc.file[pc.file >= 0]).tolist():
                    if fid not in fds:
                        fds[fid] = os.open(files.paths[fid], os.O_RDONLY)
                if pc.strided:
                    read += _gather(out, fds, pc, scratch)
                else:
                    read += _copy_runs(out, fds, pc, files)
                if on_bytes is not None:
                    on_bytes(spec.nbytes)
            for fd, off, n in read:
                _forget(fd, off, n)
    except BaseException:
        for out in opened:
            out.abort()
        raise
    finally:
        for fd in fds.values():
            os.close(fd)
    for k, out in enumerate(opened):
        try:
            out.close()
        except BaseException:
            for rest in opened[k + 1 :]:  # a failed close must not leave the other files' threads and fds
                rest.abort()
            raise

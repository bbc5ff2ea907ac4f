"""Atomic output directories for every checkpoint writer.

``atomic_dir(out)`` hands out ``OUT.tmp-<pid>``; when the block succeeds every file and directory
in it is fsynced (writers need not: one pass at the end lets the disk write a file back while the
next one is produced, and covers small files such as ``metadata.json``), the optional
``COMPLETE`` marker is written last, and the directory is renamed to ``OUT`` (a reader never sees
a half-written ``OUT``). On any exception,
Ctrl-C included, the temp dir is removed and nothing appears at ``OUT``.

Every directory made here also holds an ``OWNER`` file (``.megatron_vrft``, hidden, so HF exports
keep the released file list), so ``is_ours`` can tell our outputs from a user's directory:
``overwrite=True`` replaces only an empty directory or one of ours, never e.g. ``~/models``.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["CheckpointError", "COMPLETE", "OWNER", "atomic_dir", "is_complete", "is_ours"]

COMPLETE = "COMPLETE"
OWNER = ".megatron_vrft"


class CheckpointError(ValueError):
    """A checkpoint directory/file that cannot be read or written as asked (message names it)."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def is_ours(path: str | Path) -> bool:
    """Whether ``path`` is a directory this project wrote (``OWNER`` file, or the ``COMPLETE`` marker
    of checkpoints written before ``OWNER`` existed): the only non-empty directories that
    ``atomic_dir(overwrite=True)`` (and a checkpoint rotation) may delete."""
    path = Path(path)
    return path.is_dir() and ((path / OWNER).is_file() or is_complete(path))


@contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = False, marker: bool = True) -> Iterator[Path]:
    """Yields a fresh temp dir next to ``out``; on success it becomes ``out`` (see module doc).

    An existing non-empty ``out`` is an error unless ``overwrite`` and ``is_ours(out)`` (then it is
    replaced only after the new one is complete); a directory we did not write is never replaced.
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not is_ours(out):
            raise CheckpointError(f"output directory {out} already exists, is not empty and was not written by "
                                  "megatron_vrft (no COMPLETE or .megatron_vrft file): refusing to replace it, "
                                  "choose another or an empty directory")
        if not overwrite:
            state = "a complete checkpoint" if is_complete(out) else "a megatron_vrft output"
            raise CheckpointError(f"output directory {out} already exists and is {state}; "
                                  "pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / OWNER).write_text("written by megatron_vrft (checkpoint/atomic.py)\n")
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync(f)
        if marker:
            with open(tmp / COMPLETE, "w") as f:
                f.write("ok\n")
                f.flush()
                os.fsync(f.fileno())
        for sub in [p for p in tmp.rglob("*") if p.is_dir()] + [tmp]:
            _fsync(sub)
        if out.exists():
            old = out.parent / f"{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
        _fsync(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

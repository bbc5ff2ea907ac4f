"""Test helper: one synthetic dataset tree (every format, with broken records) per test process."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from megatron_vrft.data.synthetic import make_synthetic

NUM = 6


@functools.lru_cache(maxsize=None)
def synthetic_tree() -> tuple[Path, dict]:
    """(root, manifest) of ``make_synthetic(num=6, with_bad=True)``, built once and removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="mvrft_syn_"))
    atexit.register(shutil.rmtree, root, True)
    return root, make_synthetic(root, num=NUM, with_bad=True)


def dataset(fmt: str, mode: str) -> dict:
    root, manifest = synthetic_tree()
    entry = next(d for d in manifest["datasets"] if d["format"] == fmt and d["mode"] == mode)
    return {**entry, "path": root / entry["path"], "media_root": root / entry["media_root"]}


# Small frames and few of them keep decode + tokenisation fast in tests (4 tokens per frame pair).
SMALL_VIDEO = {"nframes": 4, "min_pixels": 56 * 56, "max_pixels": 56 * 56}
SMALL_IMAGE = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}

"""Loading a Megatron-Core dist checkpoint without ever running pickled code.

Where a ``torch_dist`` checkpoint (mcore 0.16.1 on torch 2.13) holds pickles, and how each is read:

- ``.metadata`` (torch DCP's global metadata): ``FileSystemReader.read_metadata`` calls plain
  ``pickle.load`` — a crafted file runs code. ``verify_dist_checkpoint`` unpickles it first with
  an allowlist of the DCP metadata classes (``_SafeMetadataUnpickler``) and refuses anything else.
- ``common.pt`` and ``*.pt`` object files: mcore calls ``torch.load`` without ``weights_only``
  (torch >= 2.6 then defaults to True, unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set);
- byte items inside ``*.distcp`` (mcore ``ShardedObject``s, e.g. ``_extra_state`` and our RNG
  states): DCP's ``DefaultLoadPlanner.load_bytes`` calls ``torch.load(weights_only=False)``.
  ``weights_only_loads()`` sets ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` for the duration of the load,
  which torch applies even to explicit ``weights_only=False`` calls, so both go through torch's
  restricted unpickler. ``verify_dist_checkpoint`` also checks every ``*.pt`` up front, so the
  error names the file.

The check runs before the load, so a file swapped between the two by a concurrent writer is not
covered; the threat handled is a crafted checkpoint on disk (downloaded, shared), not a live attacker.
"""

from __future__ import annotations

import io
import os
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from megatron_vrft.checkpoint.atomic import CheckpointError

__all__ = ["verify_dist_checkpoint", "weights_only_loads", "safe_torch_load"]

# The globals a DCP ``.metadata`` pickle needs, by name (recorded from checkpoints written by mcore
# 0.16.1 / torch 2.13): metadata dataclasses and enums, torch.Size, torch dtypes and layouts. Whole
# modules are not allowed: they also export functions that write files.
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.planner": {"SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "LoadItemType"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset"},
}


class _SafeMetadataUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: Path):
        super().__init__(fh)
        self.path = path

    def find_class(self, module: str, name: str):
        ok = name in _ALLOWED.get(module, ()) or (
            module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)))
        if not ok:
            raise CheckpointError(f"refusing to load {self.path}: its pickle references {module}.{name}, "
                                  "which a checkpoint's metadata never needs (a crafted file?)")
        return super().find_class(module, name)


def safe_torch_load(path: str | Path):
    """``torch.load(path, weights_only=True)`` with torch's refusal turned into a one-line CheckpointError."""
    try:
        with weights_only_loads():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"refusing to load {path}: it holds pickled code or objects that are not plain "
                              f"tensors/containers ({first})") from None


def verify_dist_checkpoint(ckpt_dir: str | Path) -> None:
    """Raises CheckpointError when any pickle in ``ckpt_dir`` would need more than data to load."""
    ckpt_dir = Path(ckpt_dir)
    for meta in sorted(ckpt_dir.glob("*.metadata")):
        with open(meta, "rb") as fh:
            try:
                _SafeMetadataUnpickler(io.BytesIO(fh.read()), meta).load()
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any unreadable metadata is a corrupt checkpoint
                raise CheckpointError(f"{meta} is not readable checkpoint metadata: {type(e).__name__}: {e}") from None
    for pt in sorted(ckpt_dir.rglob("*.pt")):
        safe_torch_load(pt)


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` in this block uses the restricted (weights-only) unpickler."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v

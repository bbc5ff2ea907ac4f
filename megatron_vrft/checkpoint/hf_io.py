"""HF Qwen2.5-VL checkpoints on disk: a validating lazy reader and a streaming sharded writer.

``HFCheckpoint(dir)`` checks everything a conversion needs BEFORE anything is written: the config
is a Qwen2.5-VL one, every shard the index lists exists and opens, every tensor name is a
Qwen2.5-VL name (either key layout), no expected tensor is missing, and every shape (read from the
safetensors headers, no data loaded) matches the config. Tensors are then read one at a time by
canonical (released-layout) name through ``get``.

``hf_shards`` / ``write_hf_index`` give the released layout's file split (files of at most
``max_shard_bytes`` with ``model.safetensors.index.json``, or a single ``model.safetensors``);
``write_hf_checkpoint`` streams tensors into it one at a time.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from megatron_vrft.checkpoint.atomic import CheckpointError
from megatron_vrft.checkpoint.stream import SafetensorsFile, TensorSpec, write_safetensors
from megatron_vrft.models.qwen2_5_vl import weights as W

__all__ = ["HFCheckpoint", "read_hf_config", "hf_shards", "write_hf_index", "write_hf_checkpoint", "copy_hf_side_files",
           "DEFAULT_MAX_SHARD_BYTES"]

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
INDEX = "model.safetensors.index.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".msgpack", ".h5")


def read_hf_config(hf_dir: str | Path) -> tuple[dict, Any]:
    """``(config.json dict, Qwen2_5_VLConfig)``; an error names the file for other architectures."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {hf_dir}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    model_type = raw.get("model_type")
    if model_type != "qwen2_5_vl":
        raise W.UnsupportedConfigError(f"HF config at {path} is model_type={model_type}, expected qwen2_5_vl")
    from transformers import Qwen2_5_VLConfig

    return raw, Qwen2_5_VLConfig.from_dict(raw)


class HFCheckpoint:
    """Lazy, validated access to an HF Qwen2.5-VL safetensors checkpoint directory."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        if not self.dir.is_dir():
            raise CheckpointError(f"HF checkpoint directory {self.dir} does not exist")
        self.config_dict, self.config = read_hf_config(self.dir)
        self._handles: dict[str, SafetensorsFile] = {}
        self._where: dict[str, tuple[str, str]] = {}  # canonical name -> (file, key in file)
        for key, fname in self._weight_map().items():
            try:
                canon = W.read_hf_key(key)
            except W.WeightMapError:
                raise W.UnsupportedConfigError(
                    f"tensor {key} in {self.dir / fname} is not a Qwen2.5-VL parameter") from None
            self._where[canon] = (fname, key)
        self.specs = self._validate()

    def _open(self, fname: str) -> SafetensorsFile:
        if fname not in self._handles:
            self._handles[fname] = SafetensorsFile(self.dir / fname)
        return self._handles[fname]

    def _weight_map(self) -> dict[str, str]:
        index = self.dir / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index} has no weight_map")
            root = os.path.normpath(os.path.abspath(self.dir))
            for key, fname in weight_map.items():
                inside = isinstance(fname, str) and fname and not os.path.isabs(fname) and \
                    os.path.commonpath([os.path.normpath(os.path.join(root, fname)), root]) == root
                if not inside:
                    raise CheckpointError(f"{index}: tensor {key} names shard {fname!r}, which is not a file inside "
                                          f"{self.dir}; refusing to read it")
            for fname in sorted(set(weight_map.values())):
                if not (self.dir / fname).is_file():
                    raise CheckpointError(f"missing shard {fname} listed in {index}")
            return weight_map
        single = self.dir / "model.safetensors"
        if single.is_file():
            return {k: single.name for k in self._open(single.name).keys()}
        raise CheckpointError(f"no safetensors weights in {self.dir} (expected model.safetensors or {INDEX})")

    def _validate(self) -> dict[str, TensorSpec]:
        expected = W.hf_shapes(self.config)
        tied = W.model_dims(self.config).tied
        for name in expected:
            if name not in self._where:
                raise W.MissingWeightError(f"HF checkpoint {self.dir} has no tensor {name}")
        specs = {}
        for name, (fname, key) in self._where.items():
            if name not in expected:
                if name == "lm_head.weight" and tied:
                    continue  # some tied checkpoints still store lm_head; it equals embed_tokens
                raise W.UnsupportedConfigError(
                    f"tensor {key} in {self.dir / fname} is not part of Qwen2.5-VL with this config.json")
            stored = self._open(fname).specs.get(key)
            if stored is None:
                raise CheckpointError(f"tensor {key} is listed in {self.dir / INDEX} but absent from {fname}")
            if stored.shape != expected[name]:
                raise W.WeightShapeError(f"HF tensor {key} in {self.dir / fname} has shape {list(stored.shape)}, "
                                         f"expected {list(expected[name])}")
            specs[name] = TensorSpec(name, stored.dtype, stored.shape)
        return specs

    def locate(self, name: str) -> tuple[Path, int, TensorSpec]:
        """``(file, offset of the first byte, stored spec)`` of canonical HF ``name`` (nothing read)."""
        fname, key = self._where[name]
        f = self._open(fname)
        return f.path, f.locate(key), f.specs[key]

    def get(self, name: str) -> torch.Tensor:
        """The tensor stored under canonical HF ``name`` (read now, one tensor)."""
        fname, key = self._where[name]
        return self._open(fname).get(key)

    def close(self) -> None:
        self._handles.clear()


def hf_shards(plan: list[TensorSpec], max_shard_bytes: int) -> list[tuple[str, list[TensorSpec]]]:
    """``plan`` (in order) cut into files of at most ``max_shard_bytes``: ``[(file name, specs)]``,
    named like the releases (``model-0000k-of-0000n.safetensors``, or ``model.safetensors``)."""
    groups: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in plan:
        if groups[-1] and size + spec.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += spec.nbytes
    n = len(groups)
    names = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    return list(zip(names, groups))


def write_hf_index(out_dir: Path, shards: list[tuple[str, list[TensorSpec]]]) -> None:
    """``model.safetensors.index.json`` for ``hf_shards``' files (none for a single file)."""
    if len(shards) > 1:
        weight_map = {s.name: fname for fname, group in shards for s in group}
        total = sum(s.nbytes for _, group in shards for s in group)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def write_hf_checkpoint(
    out_dir: Path,
    plan: list[TensorSpec],
    tensors: Iterator[tuple[str, torch.Tensor]],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    on_tensor: Callable[[int], None] | None = None,
) -> list[str]:
    """Streams ``tensors`` (in ``plan`` order) into HF safetensors shards; returns the file names."""
    shards = hf_shards(plan, max_shard_bytes)
    it = iter(tensors)
    for fname, group in shards:
        write_safetensors(out_dir / fname, group, (next(it) for _ in group), on_tensor=on_tensor)
    write_hf_index(out_dir, shards)
    return [fname for fname, _ in shards]


def copy_hf_side_files(src_dir: Path, out_dir: Path) -> list[str]:
    """Copies everything but weights (config, generation config, tokenizer, processor, template)."""
    copied = []
    for p in sorted(Path(src_dir).iterdir()):
        if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES) and not p.name.startswith("."):
            shutil.copy2(p, out_dir / p.name)
            copied.append(p.name)
    return copied

"""Qwen2.5-VL on Megatron-Core: configs (``config``), the ViT (``vision``), the model (``model``),
3-D mRoPE ids (``rope_index``) and the HF <-> mcore weight map (``weights``).

The model classes are exported lazily: data code imports ``rope_index`` from this package without
paying for megatron-core's import.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Qwen25VLModel": "model",
    "MASKED_LOGIT": "model",
    "Qwen25VisionModel": "vision",
    "mcore_configs": "config",
    "Qwen25VLConfigError": "config",
    "Qwen25VLMcoreConfig": "config",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

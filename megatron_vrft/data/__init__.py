"""Data pipeline: dataset adapters -> `Sample` -> decoded media -> chat template -> packed batches.

    from megatron_vrft.data import load_samples
    samples, report = load_samples("train.json", "llava_conv", media_root="videos/", mode="sft")

See docs/data.md for the formats and one sample record of each.
"""

from megatron_vrft.data.adapters import ADAPTERS, load_samples
from megatron_vrft.data.sample import DataFormatError, MediaRef, Sample, SkipReport, Visual

__all__ = ["ADAPTERS", "DataFormatError", "MediaRef", "Sample", "SkipReport", "Visual", "load_samples"]

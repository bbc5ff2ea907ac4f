"""Core attention for mcore layer specs, on torch SDPA (CPU, and GPU without transformer-engine).

mcore's local ``DotProductAttention`` rejects packed (THD) sequences and keeps CUDA-only buffers, so
the local specs used here swap in :class:`SDPACoreAttention`. It serves:
- the language model: causal attention, ``[s, b, heads, d]`` (BSHD as mcore passes it) or packed
  THD ``[t, heads, d]`` with ``cu_seqlens`` (sequence packing);
- the vision tower: non-causal attention within the windows / frames given by ``cu_seqlens``.
GQA uses SDPA's ``enable_gqa`` (query head ``h`` reads KV group ``h // (heads / groups)``, which is
mcore's per-group QKV layout). Variable-length THD attention groups the segments by length and runs
one batched SDPA call per distinct length: ViT windows are mostly the same size, so this is a few
large kernels instead of one per window, and never a dense ``[t, t]`` mask.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

__all__ = ["SDPACoreAttention", "varlen_sdpa"]


def varlen_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    causal: bool,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention inside each segment of a packed sequence.

    Args:
        q: ``[t, hq, d]``; k, v: ``[t, hkv, d]`` with ``hq % hkv == 0``.
        cu_seqlens: ``[n + 1]`` int, segment boundaries (``cu_seqlens[-1] == t``); empty segments
            are allowed.
    Returns:
        ``[t, hq, d]``.
    """
    bounds = cu_seqlens.tolist()
    out = torch.empty_like(q)
    gqa = q.shape[1] != k.shape[1]
    by_len: dict[int, list[int]] = {}
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            by_len.setdefault(end - start, []).append(start)
    for length, starts in by_len.items():
        offsets = torch.arange(length, device=q.device)
        idx = (torch.tensor(starts, device=q.device)[:, None] + offsets).reshape(-1)  # [n*L]
        # [n*L, h, d] -> [n, h, L, d]
        qs, ks, vs = (x[idx].view(len(starts), length, *x.shape[1:]).transpose(1, 2) for x in (q, k, v))
        o = F.scaled_dot_product_attention(
            qs, ks, vs, is_causal=causal, scale=scale, dropout_p=dropout_p, enable_gqa=gqa
        )
        out[idx] = o.transpose(1, 2).reshape(-1, *q.shape[1:])
    return out


class SDPACoreAttention(MegatronModule):
    """Drop-in ``core_attention`` for mcore ``SelfAttention`` (same constructor and forward API as
    ``DotProductAttention``)."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            raise NotImplementedError("SDPACoreAttention does not implement context parallelism")
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
    ) -> torch.Tensor:
        """query ``[s, b, hq, d]`` (or THD ``[t, hq, d]``), key/value ``[s, b, hkv, d]`` (``[t, hkv, d]``).

        ``attention_mask`` (BSHD only): bool ``[b or 1, 1, s, s]``, True = masked out (mcore's
        convention), combined with the causal mask. Returns ``[s, b, hq*d]`` (``[t, hq*d]``).
        """
        if attention_bias is not None:
            raise NotImplementedError("attention_bias is not supported by SDPACoreAttention")
        mask_type = attn_mask_type or self.attn_mask_type
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        dropout_p = self.dropout_p if self.training else 0.0
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            cu = packed_seq_params.cu_seqlens_q_padded
            cu = packed_seq_params.cu_seqlens_q if cu is None else cu
            out = varlen_sdpa(
                query, key, value, cu, causal=causal, scale=self.softmax_scale, dropout_p=dropout_p
            )
            return out.reshape(out.shape[0], -1)

        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        mask = None
        if attention_mask is not None and mask_type != AttnMaskType.no_mask:
            mask = ~attention_mask  # SDPA: True = attend
            if causal:
                s = q.shape[2]
                mask = mask & torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
            causal = False
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            scale=self.softmax_scale,
            dropout_p=dropout_p,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)

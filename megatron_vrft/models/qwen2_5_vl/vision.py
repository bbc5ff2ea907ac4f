"""The Qwen2.5-VL vision tower on Megatron-Core modules, TP-sharded like the language model.

Structure (as transformers' ``Qwen2_5_VisionTransformerPretrainedModel``):
patch embedding (a Conv3d with kernel = stride, computed as one matmul) -> reorder the patches into
attention windows (``window_index``) -> ``depth`` pre-norm blocks (RMSNorm eps 1e-6, attention
with qkv bias and 2-D RoPE, SwiGLU MLP with biases); blocks in ``fullatt_block_indexes`` attend
over whole frames, the others within windows -> ``merger.ln_q`` (the block's ``final_layernorm``)
-> the patch merger MLP (``spatial_merge_size**2`` patches -> one LLM token) -> undo the window
order.

The mcore side is an ordinary ``TransformerBlock`` (local layer spec, non-causal
``SDPACoreAttention``) fed packed THD sequences: ``[N, 1, hidden]`` with ``PackedSeqParams`` whose
``cu_seqlens`` are the window boundaries or the frame boundaries, switched per layer. Attention never
crosses an image, a frame or a window, so all images and videos of a batch go through one call.
The index tensors (window permutation, ``cu_seqlens``, RoPE angles) are pure functions below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.models.vision.multimodal_projector import MultimodalProjector
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_vrft.models.attention import SDPACoreAttention
from megatron_vrft.models.qwen2_5_vl.config import VisionSpec

__all__ = [
    "Qwen25VisionModel",
    "vision_layer_spec",
    "window_index",
    "frame_cu_seqlens",
    "vision_rope_angles",
    "packed_params",
]


def _grids(grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in row) for row in torch.as_tensor(grid_thw).reshape(-1, 3).tolist()]


def window_index(grid_thw: torch.Tensor, spatial_merge_size: int, window_size: int, patch_size: int):
    """The window permutation of merged tokens and the window boundaries in patches.

    grid_thw: ``[n, 3]`` (t, h, w) in patches per image/video.
    Returns ``(index [M] long, cu_seqlens [w + 1] int32)`` where M = Σ t·h·w / merge² merged tokens;
    ``index[j]`` is the merged token placed at position j. Each frame's merged grid is padded to a
    multiple of the window (``window_size / merge / patch`` merged tokens a side) and cut into
    windows, row-major; ``cu_seqlens`` counts patches (merged tokens x merge²). A grid that is an
    exact multiple of the window still gets a row/column of empty windows (HF pads a whole window
    then), so repeated boundaries are removed (``unique_consecutive``).
    """
    win = window_size // spatial_merge_size // patch_size
    unit = spatial_merge_size**2
    indices, bounds, offset, total = [], [torch.zeros(1, dtype=torch.long)], 0, 0
    for t, h, w in _grids(grid_thw):
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        ids = torch.arange(t * gh * gw).reshape(t, gh, gw)
        pad_h, pad_w = win - gh % win, win - gw % win
        nh, nw = (gh + pad_h) // win, (gw + pad_w) // win
        padded = F.pad(ids, (0, pad_w, 0, pad_h), value=-1)
        padded = padded.reshape(t, nh, win, nw, win).permute(0, 1, 3, 2, 4).reshape(t, nh * nw, win * win)
        sizes = (padded >= 0).sum(-1).reshape(-1)  # merged tokens per window
        flat = padded.reshape(-1)
        indices.append(flat[flat >= 0] + offset)
        bounds.append(sizes.cumsum(0) * unit + total)
        offset += t * gh * gw
        total += t * gh * gw * unit
    cu = torch.unique_consecutive(torch.cat(bounds)).to(torch.int32)
    return torch.cat(indices), cu


def frame_cu_seqlens(grid_thw: torch.Tensor) -> torch.Tensor:
    """``[Σ t + 1]`` int32 patch boundaries of every frame (full attention is per frame, not per video)."""
    g = torch.as_tensor(grid_thw).reshape(-1, 3).long()
    per_frame = torch.repeat_interleave(g[:, 1] * g[:, 2], g[:, 0])
    return F.pad(per_frame.cumsum(0), (1, 0)).to(torch.int32)


def vision_rope_angles(grid_thw: torch.Tensor, head_dim: int, spatial_merge_size: int, theta: float) -> torch.Tensor:
    """2-D RoPE angles ``[N, head_dim]`` float32 per patch, patches in the processor's order.

    The processor emits the patches of each ``merge x merge`` block together (block-major), so the
    (row, col) of patch k follows that order. Angles are ``[row·f, col·f, row·f, col·f]`` with
    ``f = theta^(-arange(0, head_dim/2, 2) / (head_dim/2))``: mcore's non-interleaved rotary applies
    them exactly as HF's ``cat(freq_hw, freq_hw)`` with ``rotate_half``.
    """
    m = spatial_merge_size
    rows, cols = [], []
    for t, h, w in _grids(grid_thw):
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        shape = (h // m, m, w // m, m)
        rows.append(hh.reshape(shape).transpose(1, 2).reshape(-1).repeat(t))
        cols.append(ww.reshape(shape).transpose(1, 2).reshape(-1).repeat(t))
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.float32) / spatial))
    r = torch.cat(rows).float()[:, None] * inv_freq
    c = torch.cat(cols).float()[:, None] * inv_freq
    half = torch.cat([r, c], dim=-1)
    return torch.cat([half, half], dim=-1)


def packed_params(cu_seqlens: torch.Tensor) -> PackedSeqParams:
    """THD ``PackedSeqParams`` for self-attention within the segments given by ``cu_seqlens``."""
    max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_kv=cu_seqlens,
        max_seqlen_q=max_len,
        max_seqlen_kv=max_len,
    )


def vision_layer_spec() -> ModuleSpec:
    """The local mcore GPT layer (RMSNorm, ColumnParallel qkv/fc1, RowParallel proj/fc2) with
    non-causal SDPA attention: ViT blocks attend both ways inside their window/frame."""
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.params = {"attn_mask_type": AttnMaskType.no_mask}
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec


class PatchEmbed(torch.nn.Module):
    """HF's ``Conv3d(C, hidden, kernel=stride=(Tp, P, P), bias=False)`` on pre-cut patches.

    Each input row is one flattened ``C x Tp x P x P`` patch, so the convolution is one dot product
    per output channel: a matmul with the kernel viewed as ``[hidden, C·Tp·P·P]``. The parameter
    keeps the Conv3d shape so checkpoints map 1:1. Replicated across TP ranks.
    """

    def __init__(self, config: TransformerConfig, spec: VisionSpec):
        super().__init__()
        kernel = (spec.temporal_patch_size, spec.patch_size, spec.patch_size)
        self.proj = torch.nn.Conv3d(
            spec.in_channels,
            config.hidden_size,
            kernel_size=kernel,
            stride=kernel,
            bias=False,
            dtype=config.params_dtype,
            device="cpu" if config.use_cpu_initialization else torch.cuda.current_device(),
        )
        if config.perform_initialization:
            config.init_method(self.proj.weight.data)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, C·Tp·P·P]`` -> ``[N, hidden]``."""
        w = self.proj.weight
        if pixel_values.shape[-1] != w[0].numel():
            raise ValueError(
                f"pixel_values rows have {pixel_values.shape[-1]} values, the patch embedding expects "
                f"C*Tp*P*P = {w[0].numel()}"
            )
        return F.linear(pixel_values.to(w.dtype), w.reshape(w.shape[0], -1))


class Qwen25VisionModel(MegatronModule):
    """The ViT + patch merger. ``forward(pixel_values, grid_thw) -> [Σ t·h·w / merge², out_hidden]``.

    Parameter names (``weights.PARAMS``, docs/checkpoints.md): ``patch_embed.proj.weight``, ``decoder.layers.{i}.*``,
    ``decoder.final_layernorm.weight`` (HF ``merger.ln_q``), ``projection.encoder.linear_fc{1,2}.*``.
    """

    def __init__(self, config: TransformerConfig, projection_config: TransformerConfig, spec: VisionSpec):
        super().__init__(config=config)
        self.spec = spec
        self.patch_embed = PatchEmbed(config, spec)
        self.decoder = TransformerBlock(config, vision_layer_spec(), post_layer_norm=True)
        self.merge_unit = spec.spatial_merge_size**2
        self.projection = MultimodalProjector(
            projection_config,
            MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
            "mlp",
            input_size=config.hidden_size * self.merge_unit,
        )
        self.full_attention = frozenset(spec.fullatt_block_indexes)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, *, project: bool = True) -> torch.Tensor:
        """pixel_values: ``[N, C·Tp·P·P]`` patches in the processor's order, N = Σ t·h·w over grid_thw
        ``[n, 3]``. Returns the merged embeddings ``[N / merge², out_hidden]`` in the same order, or
        with ``project=False`` the merger's input ``[N / merge², hidden·merge²]`` (the frozen part
        when only the ViT blocks are frozen; ``projection`` maps it row by row)."""
        spec, unit = self.spec, self.merge_unit
        grid_thw = torch.as_tensor(grid_thw).reshape(-1, 3)
        n = int(grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != n:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patches but grid_thw {grid_thw.tolist()} needs {n}")
        device = pixel_values.device
        order, cu_window = window_index(grid_thw, spec.spatial_merge_size, spec.window_size, spec.patch_size)
        order = order.to(device)
        window = packed_params(cu_window.to(device))
        full = packed_params(frame_cu_seqlens(grid_thw).to(device))
        head_dim = self.config.kv_channels
        angles = vision_rope_angles(grid_thw, head_dim, spec.spatial_merge_size, spec.rope_theta).to(device)

        x = self.patch_embed(pixel_values)
        # Reorder by window; a merge block's patches stay together ([M, unit, ...] rows move as one).
        x = x.view(n // unit, unit, -1)[order].reshape(n, 1, -1)  # [s, b=1, h]
        rope = angles.view(n // unit, unit, -1)[order].reshape(n, 1, 1, head_dim)
        for layer in self.decoder.layers:
            # layer_number is 1-based and global (the ViT is never split by PP).
            params = full if layer.layer_number - 1 in self.full_attention else window
            x, _ = layer(x, attention_mask=None, rotary_pos_emb=rope, packed_seq_params=params)
        x = self.decoder.final_layernorm(x).reshape(n // unit, -1)
        if not project:
            return x[torch.argsort(order)]
        return self.projection(x)[torch.argsort(order)]

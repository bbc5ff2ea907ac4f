"""torch's bicubic antialias resize on CPU, bit for bit, at about half the cost: banded matrix products.

`F.interpolate(x, mode="bicubic", antialias=True)` on a float32 CPU tensor resamples along W, then
along H (aten `separable_upsample_generic_Nd_kernel_impl`). Each output of a pass is a chain over
its taps k0..k1 of the input line: out = x[k0]*w[k0]; out += x[k]*w[k]. torch's build evaluates that
chain with fused multiply-adds when an output has at most 4 taps (upscales, e.g. the 360x640 ->
364x644 that smart_resize's rounding to multiples of 28 makes of a 640x360 video) and without them
for the longer chains of a downscale (e.g. 720p -> 560x1008), which therefore stay with torch.

A GEMM microkernel computes each output of a matrix product the same way: one accumulator, k in
ascending order, an FMA per step. So a pass can run as a few matrix products over bands of the
input, each band widened with zero weights (x*0 added to a float changes nothing) to one common
width so that every product has the same shape and the BLAS takes the same code path for all of
them. That holds only for a given torch/BLAS build, CPU and shape, so every geometry is verified
once per process: the banded pass and torch's pass run on the same random input (random, because a
flat or dark probe would agree whatever the arithmetic) and the banded pass is used only if every
value is identical; otherwise that pass stays with torch. Either way the result is torch's.

A probe costs about two passes, so it must be paid back by later banded passes of the same
geometry: torch serves a geometry's first ``PROBE_AFTER - 1`` passes, and only a geometry that
keeps coming back (a data set of few resolutions: every chunk of every video) is probed. A data set
where every video has its own resolution then runs torch's kernel at torch's speed, probe-free
(docs/benchmarks.md, "mixed resolutions").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

BAND_OUTPUTS = 32  # outputs per band; 16-64 are within 10% of each other on one core
# torch fuses the chain only up to this many taps (see above): longer ones are not even probed, which
# spares downscales (the usual case for >= 720p input) a probe that cannot pass.
MAX_FUSED_TAPS = 4
# Passes of one geometry (axis, batch, sizes) served by torch before it is probed. A probe costs
# ~2.5 torch passes and a banded pass saves ~0.6 of one (360x640 -> 364x644, 4 frames), so it pays
# after ~4 banded passes; a 50-frame video is 12 four-frame passes, so a resolution used by one such
# video is never probed, and one that comes back is probed once and then runs banded.
PROBE_AFTER = 16
_SEEN_MAX = 4096  # geometries counted per process before the counts start over (bounded memory)
_seen: dict[tuple, int] = {}


def _torch_pass(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def _weights(n_in: int, n_out: int) -> torch.Tensor:
    """float32 [n_in, n_out]: torch's own filter weights, read off by resampling the identity.

    Row k of the identity resamples to w[k, :] exactly (1*w is exact, and the other taps add zeros).
    Not cached: only the bands cut from it are (a dense 4K matrix would be ~30 MB per geometry).
    """
    eye = torch.eye(n_in, dtype=torch.float32).reshape(1, n_in, 1, n_in)
    return _torch_pass(eye, (1, n_out))[0, :, 0, :].contiguous()


@dataclass(frozen=True)
class _Bands:
    """The bands of one axis: output start o0 and input start i0 of each, weights [n, width, outputs]."""

    o0: tuple[int, ...]
    i0: tuple[int, ...]
    weights: torch.Tensor
    width: int
    outputs: int
    max_taps: int  # most non-zero weights of any output


@lru_cache(maxsize=64)
def _bands(n_in: int, n_out: int) -> _Bands:
    w = _weights(n_in, n_out)
    outputs = min(BAND_OUTPUTS, n_out)
    # The last band ends at n_out (overlapping its neighbour) so that every band has `outputs` outputs.
    starts = [*range(0, n_out - outputs, outputs), n_out - outputs]
    used = w != 0
    spans = []
    for o0 in starts:
        rows = used[:, o0 : o0 + outputs].any(dim=1).nonzero().flatten()
        spans.append((int(rows[0]), int(rows[-1]) + 1))
    width = max(hi - lo for lo, hi in spans)
    i0 = [min(lo, n_in - width) for lo, _ in spans]
    weights = torch.stack([w[i : i + width, o : o + outputs] for i, o in zip(i0, starts)])
    max_taps = int(used.sum(dim=0).max())
    return _Bands(tuple(starts), tuple(i0), weights, width, outputs, max_taps)


def _banded_w(x: torch.Tensor, n_out: int) -> torch.Tensor:
    """float32 [B, H, W_in] -> [B, H, n_out], resampled along W."""
    b, h, n_in = x.shape
    bands = _bands(n_in, n_out)
    out = torch.empty((b, h, n_out), dtype=torch.float32)
    tmp = torch.empty((b, h, bands.outputs), dtype=torch.float32)
    for o0, i0, w in zip(bands.o0, bands.i0, bands.weights):
        torch.bmm(x[:, :, i0 : i0 + bands.width], w.expand(b, -1, -1), out=tmp)
        out[:, :, o0 : o0 + bands.outputs] = tmp
    return out


def _banded_h(x: torch.Tensor, n_out: int) -> torch.Tensor:
    """float32 [B, H_in, W] -> [B, n_out, W], resampled along H."""
    b, n_in, w_size = x.shape
    bands = _bands(n_in, n_out)
    out = torch.empty((b, n_out, w_size), dtype=torch.float32)
    tmp = torch.empty((b, bands.outputs, w_size), dtype=torch.float32)
    for o0, i0, w in zip(bands.o0, bands.i0, bands.weights):
        torch.bmm(w.t().expand(b, -1, -1), x[:, i0 : i0 + bands.width], out=tmp)
        out[:, o0 : o0 + bands.outputs] = tmp
    return out


@lru_cache(maxsize=256)
def _banded_is_exact(axis: str, batch: int, h: int, w: int, n_out: int, threads: int) -> bool:
    """Does the banded pass equal torch's on this build/CPU for input [batch, h, w] (`threads` keys the cache)?"""
    n_in = w if axis == "w" else h
    if _bands(n_in, n_out).max_taps > MAX_FUSED_TAPS:
        return False
    g = torch.Generator().manual_seed(0)
    # Fractional values: the H pass sees the float output of the W pass (integers are a special case).
    probe = torch.rand((batch, 1, h, w), generator=g).mul_(256)
    if axis == "w":
        return torch.equal(_banded_w(probe[:, 0], n_out), _torch_pass(probe, (h, n_out))[:, 0])
    return torch.equal(_banded_h(probe[:, 0], n_out), _torch_pass(probe, (n_out, w))[:, 0])


def _use_banded(axis: str, batch: int, h: int, w: int, n_out: int) -> bool:
    """Whether this pass runs banded: only once the geometry has come ``PROBE_AFTER`` times, and
    then only if the (cached) probe says it is exact."""
    key = (axis, batch, h, w, n_out, torch.get_num_threads())
    count = _seen.get(key, 0) + 1
    if count < PROBE_AFTER:
        if len(_seen) >= _SEEN_MAX:
            _seen.clear()
        _seen[key] = count
        return False
    _seen[key] = PROBE_AFTER
    return _banded_is_exact(*key)


def bicubic_aa(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float32 [T, C, H, W] -> [T, C, height, width], equal to F.interpolate(bicubic, antialias=True).

    Each pass runs banded where this geometry is frequent and verified exact (see module docstring),
    else torch's.
    """
    t, c, h, w = x.shape
    b = t * c
    y = x.reshape(b, h, w)
    if width != w:
        if _use_banded("w", b, h, w, width):
            y = _banded_w(y, width)
        else:
            y = _torch_pass(y.unsqueeze(1), (h, width))[:, 0]
    if height != h:
        if _use_banded("h", b, h, width, height):
            y = _banded_h(y, height)
        else:
            y = _torch_pass(y.unsqueeze(1), (height, width))[:, 0]
    return y.reshape(t, c, height, width)

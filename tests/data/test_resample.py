"""The banded resize equals torch's F.interpolate(bicubic, antialias=True) bit for bit, or falls back to it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_vrft.data import resample


def _torch(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


@pytest.fixture(autouse=True)
def fresh_caches(request, monkeypatch):
    """Fresh probe caches; every geometry probed on its first pass (so one call exercises the banded
    path), except in the tests of the probe gate itself."""
    if "gate" not in request.node.name:
        monkeypatch.setattr(resample, "PROBE_AFTER", 1)
    clear = resample._banded_is_exact.cache_clear
    clear()
    resample._seen.clear()
    yield
    clear()
    resample._seen.clear()


@pytest.mark.parametrize(
    "src,dst",
    [
        ((360, 640), (364, 644)),  # qwen-vl-utils default for 640x360: upscale both axes
        ((90, 160), (112, 168)),
        ((57, 101), (84, 112)),  # odd sizes
        ((360, 640), (280, 504)),  # downscale: torch's longer chains (no fused multiply-add)
        ((100, 60), (112, 56)),  # up along H, down along W
        ((56, 40), (56, 84)),  # W only
        ((40, 84), (84, 84)),  # H only
    ],
)
@pytest.mark.parametrize("frames", [1, 3])
def test_equals_torch_bit_for_bit(src, dst, frames):
    g = torch.Generator().manual_seed(hash((src, dst, frames)) % 2**31)
    x = torch.randint(0, 256, (frames, 3, *src), generator=g).to(torch.float32)
    assert torch.equal(resample.bicubic_aa(x, *dst), _torch(x, dst))
    # Structured content too: a ramp with a hard edge (overshoot) and a flat region.
    ramp = torch.linspace(0, 255, src[1]).expand(frames, 3, *src).clone()
    ramp[..., : src[0] // 2, : src[1] // 3] = 255
    assert torch.equal(resample.bicubic_aa(ramp, *dst), _torch(ramp, dst))


def test_a_pass_that_disagrees_with_torch_is_not_used(monkeypatch):
    real = resample._banded_w
    monkeypatch.setattr(resample, "_banded_w", lambda x, n: real(x, n).add_(1e-3))
    x = torch.randint(0, 256, (2, 3, 90, 160)).to(torch.float32)
    assert not resample._banded_is_exact("w", 6, 90, 160, 168, torch.get_num_threads())
    assert torch.equal(resample.bicubic_aa(x, 112, 168), _torch(x, (112, 168)))


def test_long_chains_are_not_probed(monkeypatch):
    # A downscale has more taps per output than torch fuses: it goes to torch without a probe.
    def fail(*args):
        raise AssertionError("probed a downscale")

    monkeypatch.setattr(resample, "_banded_w", fail)
    monkeypatch.setattr(resample, "_banded_h", fail)
    assert resample._bands(640, 504).max_taps > resample.MAX_FUSED_TAPS
    x = torch.randint(0, 256, (1, 3, 360, 640)).to(torch.float32)
    assert torch.equal(resample.bicubic_aa(x, 280, 504), _torch(x, (280, 504)))


def test_the_probe_is_random_not_the_caller_data(monkeypatch):
    # A flat (e.g. black) first chunk agrees with torch whatever the arithmetic: the verdict must
    # come from the random probe, so a pass that is wrong on real content is still rejected.
    real = resample._banded_h
    monkeypatch.setattr(resample, "_banded_h", lambda x, n: real(x, n).mul_(1.0000001))
    black = torch.zeros(1, 3, 90, 160)
    assert torch.equal(resample.bicubic_aa(black, 112, 168), _torch(black, (112, 168)))
    texture = torch.randint(0, 256, (1, 3, 90, 160)).to(torch.float32)
    assert torch.equal(resample.bicubic_aa(texture, 112, 168), _torch(texture, (112, 168)))


def test_torch_weights_are_read_exactly():
    # Rows of the weight matrix sum to one output per input impulse; columns sum to ~1 (normalised).
    w = resample._weights(360, 364)
    assert w.shape == (360, 364) and w.dtype == torch.float32
    assert torch.allclose(w.sum(0), torch.ones(364), atol=1e-6)
    impulse = torch.zeros(1, 1, 1, 360)
    impulse[..., 17] = 1
    assert torch.equal(_torch(impulse, (1, 364))[0, 0, 0], w[17])
    bands = resample._bands(360, 364)
    assert all(o0 + bands.outputs <= 364 for o0 in bands.o0) and bands.o0[-1] + bands.outputs == 364
    assert all(0 <= i0 <= 360 - bands.width for i0 in bands.i0)


def test_gate_probes_only_geometries_that_come_back(monkeypatch):
    """A geometry's first PROBE_AFTER - 1 passes run torch's kernel without a probe (a data set of
    all-different resolutions never pays one); from the PROBE_AFTER-th pass on it is probed once
    and then runs banded."""
    probes = []
    real = resample._banded_is_exact

    def counting(*key):
        probes.append(key)
        return real(*key)

    monkeypatch.setattr(resample, "_banded_is_exact", counting)
    banded = []
    real_w = resample._banded_w
    monkeypatch.setattr(resample, "_banded_w", lambda x, n: banded.append(n) or real_w(x, n))
    g = torch.Generator().manual_seed(0)
    for h in range(90, 90 + 10):  # ten one-off geometries: no probe at all
        x = torch.randint(0, 256, (1, 3, h, 160), generator=g).to(torch.float32)
        assert torch.equal(resample.bicubic_aa(x, 112, 168), _torch(x, (112, 168)))
    assert probes == [] and banded == []
    x = torch.randint(0, 256, (1, 3, 90, 160), generator=g).to(torch.float32)
    for _ in range(resample.PROBE_AFTER - 1):  # 90x160 came once above
        assert torch.equal(resample.bicubic_aa(x, 112, 168), _torch(x, (112, 168)))
    assert len(probes) == 2 and len(banded) == 2  # W and H probed; W's probe and its pass ran banded
    for _ in range(3):
        assert torch.equal(resample.bicubic_aa(x, 112, 168), _torch(x, (112, 168)))
    assert len(probes) == 2 + 3 * 2 and len(banded) == 2 + 3  # later passes: the cached verdict, banded

"""load_image and smart_resize against qwen-vl-utils 0.0.14 `fetch_image` / `smart_resize` rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_vrft.data.media import MediaError, load_image, smart_resize

# (height, width, min_pixels, max_pixels) -> qwen-vl-utils smart_resize (factor 28); None = image defaults
# 4*28*28 and 16384*28*28. Cross-checked against qwen-vl-utils 0.0.14's own function.
RESIZE_TABLE = [
    ((48, 64, None, None), (56, 56)),
    ((150, 230, None, None), (140, 224)),
    ((1080, 1920, None, None), (1092, 1932)),
    # 1092*1932 > 602112 -> beta = sqrt(1080*1920/602112); floor(1080/beta/28)=20, floor(1920/beta/28)=36
    ((1080, 1920, 3136, 602112), (560, 1008)),
    # qwen-vl-utils keeps at least one factor on the short side (transformers' copy would give 0 here)
    ((10, 1000, None, None), (28, 1008)),
    ((20, 20, None, None), (56, 56)),
    ((5000, 7000, None, None), (3024, 4228)),
    ((360, 640, 100352, 602112), (364, 644)),
    ((360, 640, 3136, 50000), (140, 280)),
    ((14, 14, 3136, 12544), (56, 56)),
]


@pytest.mark.parametrize("args,expected", RESIZE_TABLE)
def test_smart_resize_table(args, expected):
    assert smart_resize(args[0], args[1], 28, args[2], args[3]) == expected


def test_smart_resize_rejects_extreme_aspect_and_bad_bounds():
    with pytest.raises(MediaError) as err:
        smart_resize(2, 500, path="strip.png")
    assert err.value.reason == "bad_aspect" and err.value.path == "strip.png"
    with pytest.raises(ValueError, match="max_pixels"):
        smart_resize(100, 100, 28, min_pixels=5000, max_pixels=4000)


def test_load_image_sizes_and_pixels(tmp_path):
    rng = np.random.default_rng(1)
    arr = (rng.random((150, 230, 3)) * 255).astype(np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    image = load_image(path)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 140, 224)
    # fetch_image: PIL bicubic resize of the RGB image
    expected = np.array(Image.fromarray(arr).resize((224, 140), Image.Resampling.BICUBIC))
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))
    # bytes input gives the same result; bounds are honoured
    assert torch.equal(load_image(path.read_bytes()), image)
    assert tuple(load_image(path, 3136, 20000).shape) == (3, 112, 168)


def test_load_image_rgba_on_white_and_grey_to_rgb(tmp_path):
    rgba = np.zeros((56, 56, 4), dtype=np.uint8)
    rgba[:, :28] = (10, 20, 30, 255)  # opaque
    rgba[:, 28:] = (10, 20, 30, 0)  # transparent -> white, as qwen-vl-utils' to_rgb does
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image[:, 28, 5].tolist() == [10, 20, 30]
    assert image[:, 28, 50].tolist() == [255, 255, 255]
    Image.fromarray(np.full((56, 56), 99, dtype=np.uint8), "L").save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png")[:, 0, 0].tolist() == [99, 99, 99]


def test_load_image_bad_input(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((200, 200, 3), dtype=np.uint8)).save(buf, format="PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((1, 300, 3), dtype=np.uint8)).save(tmp_path / "strip.png")
    cases = {"missing.png": "missing", "empty.png": "empty", "trunc.png": "corrupt", "text.jpg": "corrupt",
             "strip.png": "bad_aspect"}
    for name, reason in cases.items():
        with pytest.raises(MediaError) as err:
            load_image(tmp_path / name)
        assert err.value.reason == reason, name
        assert err.value.path == str(tmp_path / name)
    with pytest.raises(MediaError) as err:
        load_image(b"\x00\x01garbage")
    assert err.value.reason == "corrupt" and err.value.path == "<bytes>"

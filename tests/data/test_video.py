"""read_video / probe_video against the qwen-vl-utils 0.0.14 `fetch_video` rules, on generated mp4s.

The expected (indices, size, sample_fps) table was worked out from the rules in
megatron_vrft/data/video.py's docstring (two rows are derived in comments below) and cross-checked
against qwen-vl-utils 0.0.14's own `fetch_video` (decord path, with torchvision's resize stubbed to
report the size it was asked for), which cannot be imported in CI because it needs torchvision.
"""

from __future__ import annotations

import pytest
import torch
from _mp4 import frame_ids, frame_pattern, write_mp4

from megatron_vrft.data import video as video_mod
from megatron_vrft.data import video_backends
from megatron_vrft.data.media import MediaError, resize_frames
from megatron_vrft.data.video import probe_video, read_video

A_FRAMES, A_FPS = 50, 10  # 64x48, 5.0 s
B_FRAMES, B_FPS = 90, 24  # 160x120, 3.75 s
C_FRAMES, C_FPS = 40, 25  # 96x64, 1.6 s
D_FRAMES, D_FPS = 3, 10  # 64x48, 0.3 s


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    files = {
        "A": write_mp4(root / "a.mp4", A_FRAMES, A_FPS, 64, 48),
        "B": write_mp4(root / "b.mp4", B_FRAMES, B_FPS, 160, 120),
        "C": write_mp4(root / "c.mp4", C_FRAMES, C_FPS, 96, 64),
        "D": write_mp4(root / "d.mp4", D_FRAMES, D_FPS, 64, 48),
    }
    data = files["A"].read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov atom (at the end) is lost
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(bytes(range(256)) * 20)
    files["root"] = root
    return files


SMALL = 4 * 28 * 28  # min_pixels that avoids the 128-token upscale where size is not under test

CASES = [
    # Default fps 2: 50/10*2 = 10 frames, linspace(0, 49, 10).round(). 64x48 rounds to 56x56 = 3136 px,
    # below the video min 128*784 = 100352 -> beta = sqrt(100352/3072), ceil(48b/28)=10, ceil(64b/28)=14.
    ("A", {}, [0, 5, 11, 16, 22, 27, 33, 38, 44, 49], (280, 392), 2.0),
    ("A", dict(fps=1), [0, 16, 33, 49], (280, 392), 0.8),  # 5 -> floor to 4
    ("A", dict(fps=4.5), [0, 2, 5, 7, 9, 12, 14, 16, 19, 21, 23, 26, 28, 30, 33, 35, 37, 40, 42, 44, 47, 49],
     (280, 392), 4.4),
    ("A", dict(nframes=7), [0, 7, 14, 21, 28, 35, 42, 49], (280, 392), 1.6),  # round(3.5)*2 = 8
    ("A", dict(nframes=5), [0, 16, 33, 49], (280, 392), 0.8),  # round(2.5)*2 = 4 (half to even)
    ("A", dict(nframes=50), list(range(50)), (280, 392), 10.0),
    # Clip [1 s, 3 s] -> frames 10..30 (21 frames); 21/10*2 = 4.2 -> 4; sample_fps = 4/21*10.
    ("A", dict(video_start=1.0, video_end=3.0), [10, 17, 23, 30], (280, 392), 4 / 21 * 10),
    ("A", dict(video_end=100.0), [0, 5, 11, 16, 22, 27, 33, 38, 44, 49], (280, 392), 2.0),  # clamped
    ("A", dict(video_start=0.25, fps=4), [3, 6, 8, 11, 14, 17, 19, 22, 25, 27, 30, 33, 35, 38, 41, 44, 46, 49],
     (280, 392), 18 / 47 * 10),  # start = ceil(2.5) = 3
    ("B", dict(min_pixels=SMALL, max_pixels=7840), [0, 18, 36, 53, 71, 89], (56, 84), 1.6),
    ("B", dict(min_pixels=SMALL, total_pixels=31360), [0, 18, 36, 53, 71, 89], (84, 112), 1.6),
    ("B", dict(fps=8, max_frames=10), [0, 10, 20, 30, 40, 49, 59, 69, 79, 89], (280, 392), 8 / 3),
    ("B", dict(fps=0.5, min_frames=6, min_pixels=SMALL), [0, 18, 36, 53, 71, 89], (112, 168), 1.6),
    ("B", dict(nframes=3, min_pixels=SMALL), [0, 30, 59, 89], (112, 168), 4 / 90 * 24),
    ("C", {}, [0, 13, 26, 39], (280, 392), 2.5),  # 3.2 frames -> min_frames 4
    ("D", {}, [0, 2], (280, 392), 2 / 3 * 10),  # max(0.6, 4) capped by 3 frames, floored to 2
]


@pytest.mark.parametrize("name,kwargs,indices,size,sample_fps", CASES)
def test_sampling_table(videos, name, kwargs, indices, size, sample_fps):
    frames, info = read_video(videos[name], **kwargs)
    assert list(info.frame_indices) == indices
    assert frames.dtype == torch.uint8
    assert tuple(frames.shape) == (len(indices), 3, *size)
    assert info.sample_fps == pytest.approx(sample_fps, rel=1e-12)
    # The pixels are the frames that were asked for, not just the right count.
    assert frame_ids(frames) == indices


def test_info_fields(videos):
    _, info = read_video(videos["B"], fps=2, min_pixels=SMALL)
    assert info.fps == B_FPS and info.total_frames == B_FRAMES
    assert info.duration == pytest.approx(B_FRAMES / B_FPS)
    assert (info.width, info.height) == (160, 120)
    assert info.video_backend == "decord"
    assert info.timestamps == pytest.approx([i / B_FPS for i in info.frame_indices])
    assert info.timestamps[-1] == pytest.approx(89 / 24)


def test_model_seq_len_env_sets_default_total_pixels(videos, monkeypatch):
    # total_pixels = 50*784*0.9 = 35280; 6 frames -> max 11760 px -> beta = sqrt(19200/11760) -> 84x112.
    monkeypatch.setenv("MODEL_SEQ_LEN", "50")
    frames, _ = read_video(videos["B"], min_pixels=SMALL)
    assert tuple(frames.shape[-2:]) == (84, 112)


def test_pyav_backend_matches_decord(videos):
    ref, ref_info = read_video(videos["B"], fps=4, min_pixels=SMALL)
    frames, info = read_video(videos["B"], fps=4, min_pixels=SMALL, backend="pyav")
    assert info.video_backend == "pyav"
    assert info.frame_indices == ref_info.frame_indices and info.sample_fps == ref_info.sample_fps
    assert frames.shape == ref.shape
    assert frame_ids(frames) == list(ref_info.frame_indices)
    # Same decoded YUV; only the YUV->RGB conversion may differ by a few levels between the libraries.
    assert (frames.int() - ref.int()).abs().max().item() <= 4


def test_falls_back_to_pyav_when_decord_fails(videos, monkeypatch):
    def broken(path):
        raise video_backends.BackendFailure("decord cannot open: simulated")

    monkeypatch.setitem(video_backends.SOURCES, "decord", broken)
    frames, info = read_video(videos["A"], nframes=4, min_pixels=SMALL)
    assert info.video_backend == "pyav"
    assert frame_ids(frames) == [0, 16, 33, 49]


@pytest.mark.parametrize("backend", [None, "pyav"])
def test_probe_video(videos, backend):
    meta = probe_video(videos["B"], backend=backend)
    assert (meta.fps, meta.total_frames, meta.width, meta.height) == (24.0, 90, 160, 120)
    assert meta.duration == pytest.approx(3.75)
    assert meta.backend == (backend or "decord")


@pytest.mark.parametrize(
    "name,kwargs,reason",
    [
        ("missing.mp4", {}, "missing"),
        ("empty.mp4", {}, "empty"),
        ("truncated.mp4", {}, "corrupt"),
        ("garbage.mp4", {}, "corrupt"),
        ("A", dict(nframes=52), "too_short"),  # 52 > 50 frames
        ("D", dict(nframes=4), "too_short"),
        ("A", dict(video_start=4.96), "out_of_range"),  # start frame ceil(49.6) = 50 > last frame 49
        ("A", dict(video_end=0.05), "out_of_range"),  # end frame floor(0.5) = 0 == start frame
        ("A", dict(video_start=3.0, video_end=2.0), "out_of_range"),
    ],
)
@pytest.mark.parametrize("backend", [None, "pyav"])
def test_bad_input_raises_typed_error(videos, name, kwargs, reason, backend):
    path = videos[name] if name in videos else videos["root"] / name
    with pytest.raises(MediaError) as err:
        read_video(path, backend=backend, **kwargs)
    assert err.value.reason == reason
    assert err.value.path == str(path)
    assert str(path) in str(err.value)


def test_truncated_faststart_file_is_corrupt(tmp_path):
    # With the moov atom first the index survives truncation; decoding must then fail cleanly.
    import av

    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "12", "preset": "ultrafast"}
        for i in range(60):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_pattern(i, 64, 48), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as err:
        read_video(path)
    assert err.value.reason == "corrupt"


def test_probe_bad_files(videos):
    for name, reason in [("missing.mp4", "missing"), ("empty.mp4", "empty"), ("garbage.mp4", "corrupt")]:
        with pytest.raises(MediaError) as err:
            probe_video(videos["root"] / name)
        assert err.value.reason == reason


def test_argument_errors_are_not_media_errors(videos):
    with pytest.raises(ValueError, match="either fps or nframes") as err:
        read_video(videos["A"], fps=2, nframes=4)
    assert not isinstance(err.value, MediaError)
    with pytest.raises(ValueError, match="unknown video backend"):
        read_video(videos["A"], backend="torchvision")


def test_media_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(MediaError("/x.mp4", "corrupt", "bad moov")))
    assert (err.path, err.reason, err.detail) == ("/x.mp4", "corrupt", "bad moov")


def test_resize_frames_identity_and_clamp():
    frames = torch.randint(0, 256, (2, 3, 56, 84), dtype=torch.uint8)
    assert resize_frames(frames, 56, 84) is frames  # torchvision returns the input when the size is equal
    # A hard 0/255 edge: bicubic overshoots below 0 and above 255 in float; the result must clamp,
    # not wrap around in the uint8 cast.
    edge = torch.zeros(1, 3, 28, 28, dtype=torch.uint8)
    edge[..., 14:] = 255
    up = resize_frames(edge, 84, 84)
    assert up.dtype == torch.uint8 and tuple(up.shape) == (1, 3, 84, 84)
    assert up[..., :30].max().item() == 0 and up[..., -30:].min().item() == 255
    # Antialiased downscale of a flat field stays exactly flat.
    flat = torch.full((1, 3, 120, 160), 77, dtype=torch.uint8)
    assert torch.equal(resize_frames(flat, 56, 84), torch.full((1, 3, 56, 84), 77, dtype=torch.uint8))


def test_resize_frames_matches_torchvision_op_sequence():
    # torchvision's tensor resize on a whole (channels-last, as decord gives) uint8 batch: float32
    # interpolate, clamp, round, cast. Chunking and the output buffer must not change any value.
    hwc = torch.randint(0, 256, (10, 50, 70, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    frames = hwc.permute(0, 3, 1, 2)
    for size in [(56, 84), (28, 56), (112, 140)]:
        x = torch.nn.functional.interpolate(
            frames.to(torch.float32), size=size, mode="bicubic", align_corners=False, antialias=True
        )
        expected = x.clamp(0, 255).round().to(torch.uint8)
        assert torch.equal(resize_frames(frames, *size), expected), size


def test_decode_failure_in_a_later_chunk_falls_back(videos, monkeypatch):
    original = video_backends.DecordSource.frames

    def fail_after_first_chunk(self, indices):
        if indices[0] > 0:
            raise video_backends.BackendFailure("decord cannot decode: simulated")
        return original(self, indices)

    monkeypatch.setattr(video_backends.DecordSource, "frames", fail_after_first_chunk)
    frames, info = read_video(videos["A"], nframes=20, min_pixels=SMALL)  # fails on the 2nd chunk
    assert info.video_backend == "pyav"
    assert frame_ids(frames) == list(info.frame_indices) and len(info.frame_indices) == 20


def test_linspace_rounding_is_half_to_even():
    # qwen-vl-utils rounds torch.linspace values with torch.round (ties to even): 4.5 -> 4, 5.5 -> 6.
    assert video_mod.sample_indices(0, 9, 3) == [0, 4, 9]
    assert video_mod.sample_indices(0, 11, 3) == [0, 6, 11]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_on_chunk_streams_the_result_in_order(videos, backend):
    seen = []

    def record(chunk, start, info):
        assert len(chunk) % 2 == 0 and len(info.frame_indices) == 20
        seen.append((start, chunk.clone()))
        chunk.fill_(7)  # chunks are views of the result: in-place edits must land in it

    frames, info = read_video(videos["A"], nframes=20, min_pixels=SMALL, backend=backend, on_chunk=record)
    reference, _ = read_video(videos["A"], nframes=20, min_pixels=SMALL, backend=backend)
    starts = [s for s, _ in seen]
    assert starts == [0, 2, 6, 14, 18]
    assert torch.equal(torch.cat([c for _, c in seen]), reference)
    assert bool((frames == 7).all())


def test_video_patch_stream_equals_whole_video_patchify(videos):
    from megatron_vrft.data.patchify import VideoPatchStream, patchify_video

    stream = VideoPatchStream()
    frames, info = read_video(videos["B"], nframes=12, min_pixels=SMALL, on_chunk=stream)
    pixel_values, grid, second_per_grid_t = stream.result()
    ref_values, ref_grid, ref_second = patchify_video(frames, sample_fps=info.sample_fps)
    assert torch.equal(pixel_values, ref_values) and torch.equal(grid, ref_grid)
    assert second_per_grid_t == ref_second == 2 / info.sample_fps


def test_video_patch_stream_rejects_misaligned_or_missing_chunks(videos):
    from megatron_vrft.data.patchify import VideoPatchStream

    frames, info = read_video(videos["A"], nframes=8, min_pixels=SMALL)
    stream = VideoPatchStream()
    with pytest.raises(ValueError, match="not aligned"):
        stream(frames[1:4], 1, info)
    stream = VideoPatchStream()
    stream(frames[:4], 0, info)
    with pytest.raises(RuntimeError, match="got 4 of 8 frames"):
        stream.result()


@pytest.mark.parametrize("n,starts", [(50, [0, 2, 6, 14, 22, 30, 38, 44, 48, 50]), (16, [0, 2, 6, 12, 14, 16]),
                                      (8, [0, 2, 6, 8]), (6, [0, 2, 4, 6]), (2, [0, 2])])
def test_decode_chunks_are_small_at_both_ends(n, starts):
    # Only decoding runs while the first chunk decodes, and only the last chunk's resize/patchify
    # cannot overlap decoding: both are kept at 2 frames.
    assert video_mod._chunk_starts(n, 8) == starts



def test_decord_source_chunks_equal_one_get_batch(videos):
    # The first chunk reuses the frame 0 decoded for the metadata; every frame must still be decord's.
    import decord

    indices = list(range(0, 50, 3))
    source = video_backends.DecordSource(str(videos["A"]))
    got = torch.cat([source.frames(indices[i : i + 8]) for i in range(0, len(indices), 8)])
    source.close()
    expected = decord.VideoReader(str(videos["A"]), num_threads=1).get_batch(indices).asnumpy()
    assert torch.equal(got.permute(0, 2, 3, 1), torch.from_numpy(expected))

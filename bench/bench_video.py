"""Benchmark: read_video + patchify_video vs raw decord decoding of the same frames.

Run from the repository root:

    python bench/bench_video.py [--size 640x360] [--files 3] [--seconds 25] [--repeats 3]
                                [--workdir /tmp/vrft_bench_video]
    python bench/bench_video.py --mixed-resolutions 24 [--repeats 3]

It writes its own test videos (--size, default 640x360, 30 fps, H.264 with x264's default 250-frame
GOP, moving textured content) under --workdir, then for each sampling config measures, per file and
repeat:

- raw:  decord.VideoReader(path, num_threads=N) + get_batch(indices).asnumpy() for the indices
        read_video picks (the floor: the decode work any pipeline has to do), for N in 0 (decord's
        default, FFmpeg picks), 1 and 2; the ratio is taken against the fastest of the three
- ours: read_video(path, ..., on_chunk=VideoPatchStream()) (decode, resize to the qwen-vl-utils
        size, normalise and patchify into pixel_values_videos), exactly what the data loader runs

and prints frames/s for both and their wall-clock ratio (target >= 0.8), the ratio of process CPU
time against decord's default, and where the work goes (decode = the fastest raw decord call;
resize and patchify timed separately on the same decoded frames, per file).

``--mixed-resolutions N`` instead times the resize alone (``resize_frames``, what the pipeline calls
per decoded chunk) over N videos of N different sizes around --size (50 and 128 frames each, in the
pipeline's chunk sizes 2, 4, 8, ..., resized to the qwen-vl-utils size), and over N 50-frame
videos of one size, with the banded resize's probe gated (``PROBE_AFTER``, the default), probing every new
geometry (the former behaviour) and never banded (torch's kernel), interleaved per repeat.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import av
import decord
import numpy as np
import torch

from megatron_vrft.data import resample
from megatron_vrft.data.media import IMAGE_FACTOR, resize_frames, smart_resize
from megatron_vrft.data.patchify import VideoPatchStream, patchify_video
from megatron_vrft.data.video import VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, read_video

RAW_THREADS = (0, 1, 2)  # decord num_threads for the raw baseline: default, and the two explicit settings
CONFIGS = {
    "fps2 (qwen-vl-utils defaults)": dict(fps=2.0),
    "fps2 max_pixels=360*420 (Video-R2 GRPO)": dict(fps=2.0, max_pixels=360 * 420),
    "nframes=16 (Open-R1-Video)": dict(nframes=16),
}


def write_video(path: Path, seconds: int, fps: int = 30, width: int = 640, height: int = 360, seed: int = 0) -> None:
    """Textured frames that scroll and change brightness, so the encoder produces realistic P-frames."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, size=(height, width * 2, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, axis=1) + np.roll(texture, 1, axis=0)) // 3).astype(
        np.uint8
    )
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(seconds * fps):
            shift = (4 * i) % width
            frame = texture[:, shift : shift + width]
            frame = np.clip(frame.astype(np.int16) + (i % 60) - 30, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def bench_config(paths: list[Path], kwargs: dict, repeats: int) -> dict:
    """Interleave ours and raw per file so that load from other processes hits both alike."""
    wall = {"ours": 0.0, "resize": 0.0, "patch": 0.0, **{f"raw{n}": 0.0 for n in RAW_THREADS}}
    cpu = {"ours": 0.0, **{f"raw{n}": 0.0 for n in RAW_THREADS}}
    n_frames = 0
    for _ in range(repeats):
        for path in paths:
            t0, c0 = time.perf_counter(), time.process_time()
            stream = VideoPatchStream()
            frames, info = read_video(path, on_chunk=stream, **kwargs)
            stream.result()
            wall["ours"] += time.perf_counter() - t0
            cpu["ours"] += time.process_time() - c0
            n_frames += len(info.frame_indices)

            for threads in RAW_THREADS:
                t0, c0 = time.perf_counter(), time.process_time()
                vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
                raw = vr.get_batch(list(info.frame_indices)).asnumpy()
                wall[f"raw{threads}"] += time.perf_counter() - t0
                cpu[f"raw{threads}"] += time.process_time() - c0
                del vr

            # Breakdown of our extra work on the same decoded frames (no decode overlap here).
            hwc = torch.from_numpy(raw).permute(0, 3, 1, 2)
            t0 = time.perf_counter()
            resized = resize_frames(hwc, frames.shape[-2], frames.shape[-1])
            wall["resize"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            patchify_video(resized, sample_fps=info.sample_fps)
            wall["patch"] += time.perf_counter() - t0
    per_file = 1000 / (repeats * len(paths))
    best = min(RAW_THREADS, key=lambda n: wall[f"raw{n}"])
    return dict(
        frames=n_frames,
        size=tuple(frames.shape[-2:]),
        default_fps=n_frames / wall["raw0"],
        best_threads=best,
        raw_fps=n_frames / wall[f"raw{best}"],
        ours_fps=n_frames / wall["ours"],
        ratio=wall[f"raw{best}"] / wall["ours"],
        cpu_ratio=cpu["raw0"] / cpu["ours"],
        decode_ms=wall[f"raw{best}"] * per_file,
        resize_ms=wall["resize"] * per_file,
        patch_ms=wall["patch"] * per_file,
    )


CHUNKS = {50: (2, 4, 8, 8, 8, 8, 8, 4), 128: (2, 4) + (8,) * 15 + (2,)}  # read_video's chunk ramp
RESIZE_VARIANTS = {"gated probe": resample.PROBE_AFTER, "probe every geometry": 1, "torch kernel": 10**9}


def bench_mixed(width: int, height: int, n: int, repeats: int) -> None:
    """Resize-only seconds for N videos of distinct sizes and N of one size (see module doc)."""
    g = torch.Generator().manual_seed(0)
    distinct = [(height - 12 + (7 * i) % 25, width - 24 + (11 * i) % 49) for i in range(n)]
    sets = {"mixed, 50 frames": (distinct, 50), "mixed, 128 frames": (distinct, 128),
            "one size, 50 frames": ([(height, width)] * n, 50)}
    frames_of = {k: torch.randint(0, 256, (k, 3, height + 12, width + 24), dtype=torch.uint8, generator=g)
                 for k in CHUNKS}
    videos = {}
    for name, (sizes, k) in sets.items():
        videos[name] = [(frames_of[k][:, :, :h, :w], k,
                         smart_resize(h, w, IMAGE_FACTOR, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)) for h, w in sizes]
    times = {(s, v): [] for s in sets for v in RESIZE_VARIANTS}  # (wall s, process CPU s) per repeat
    for rep in range(repeats + 1):  # round 0 warms up allocator and caches, not timed
        for s in sets:
            for v, after in RESIZE_VARIANTS.items():
                resample.PROBE_AFTER = after
                resample._seen.clear()
                resample._banded_is_exact.cache_clear()
                resample._bands.cache_clear()
                t0, c0 = time.perf_counter(), time.process_time()
                for frames, k, (th, tw) in videos[s]:
                    start = 0
                    for c in CHUNKS[k]:
                        resize_frames(frames[start : start + c], th, tw)
                        start += c
                if rep:
                    times[(s, v)].append((time.perf_counter() - t0, time.process_time() - c0))
    print(f"resize only, {n} videos per set around {width}x{height}, {repeats} repeats, "
          f"load average {' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}")
    print("CPU s (the process's own time: what a loaded machine does not inflate) and wall s")
    print("| videos | variant | CPU s min / median / max | x torch kernel (CPU, median) | wall s median |")
    print("|---|---|---|---|---|")
    mid = repeats // 2
    for s in sets:
        base = sorted(c for _, c in times[(s, "torch kernel")])[mid]
        for v in RESIZE_VARIANTS:
            cpu, wall = sorted(c for _, c in times[(s, v)]), sorted(w for w, _ in times[(s, v)])
            print(f"| {s} | {v} | {cpu[0]:.2f} / {cpu[mid]:.2f} / {cpu[-1]:.2f} | {cpu[mid] / base:.2f} | "
                  f"{wall[mid]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the generated videos")
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vrft_bench_video"))
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="intra-op threads; DataLoader workers run with 1 (default)"
    )
    parser.add_argument("--mixed-resolutions", type=int, default=0, metavar="N",
                        help="time the resize alone over N videos of distinct sizes (see above)")
    args = parser.parse_args()
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WIDTHxHEIGHT, got {args.size!r}")
    torch.set_num_threads(args.torch_threads)
    if args.mixed_resolutions:
        bench_mixed(width, height, args.mixed_resolutions, args.repeats)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.files):
        path = args.workdir / f"bench_{i}_{args.seconds}s_{width}x{height}.mp4"
        if not path.exists():
            write_video(path, args.seconds, width=width, height=height, seed=i)
        paths.append(path)
    # Warm-up: first decord/av calls load codecs and allocate thread pools.
    read_video(paths[0], nframes=4)

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, decord {decord.__version__}, av {av.__version__}")
    print(f"{args.files} files x {args.seconds}s {width}x{height}@30fps, {args.repeats} repeats")
    header = f"{'config':42s} {'frames':>6s} {'size':>9s} {'raw0 f/s':>8s} {'best raw':>11s} {'ours f/s':>8s}" \
             f" {'ratio':>6s} {'cpu ratio':>9s} {'decode ms':>9s} {'resize ms':>9s} {'patch ms':>8s}"
    print(header)
    for name, kwargs in CONFIGS.items():
        r = bench_config(paths, kwargs, args.repeats)
        best = f"{r['raw_fps']:.1f} (t{r['best_threads']})"
        print(
            f"{name:42s} {r['frames']:6d} {r['size'][0]:4d}x{r['size'][1]:<4d} {r['default_fps']:8.1f} {best:>11s} "
            f"{r['ours_fps']:8.1f} {r['ratio']:6.2f} {r['cpu_ratio']:9.2f} "
            f"{r['decode_ms']:9.1f} {r['resize_ms']:9.1f} {r['patch_ms']:8.1f}"
        )

if __name__ == "__main__":
    main()

"""Host memory of one 128-frame SFT sample: peak RSS while a DataLoader worker decodes it, and the
bytes the worker ships to the trainer, before and after `trainer.data.SFTItems`.

    python bench/bench_sft_memory.py [--width 640 --height 360]

A 128 s video at 1 fps (Video-R2 SFT sampling: 1 fps, at most 128 frames, 360*420 pixels per frame)
is written with PyAV, loaded as a llava_conv sample, then decoded in a fresh process per mode:
``raw`` (the `SampleDataset` item: decoded sample with uint8 frames + float32 pixels, and the
sequence's own float32 pixels), ``sft_fp32`` and ``sft_bf16`` (`SFTItems`: the sequence only, pixels
in the model dtype). Reports the process's peak RSS above its baseline (ru_maxrss) and the tensor
bytes of the shipped item (what a worker moves to the main process through shared memory, and what
each prefetched item keeps alive there).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FRAMES = 128
VIDEO = {"fps": 1.0, "max_frames": 128, "max_pixels": 360 * 420}


def _write_video(path: Path, width: int, height: int) -> None:
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "g": "16"}
        for _ in range(FRAMES):
            img = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _tensor_bytes(obj, seen=None) -> int:
    import dataclasses

    import torch

    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(_tensor_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(x, seen) for x in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(x, seen) for x in obj.values())
    return 0


def measure(root: Path, mode: str) -> dict:
    """One mode in this process: decode sample 0 and report memory (run in a fresh process)."""
    import torch

    torch.set_num_threads(1)
    from megatron_vrft.data import load_samples
    from megatron_vrft.data.loader import SampleDataset
    from megatron_vrft.data.template import VisionTokenIds
    from megatron_vrft.data.testing import build_tiny_tokenizer
    from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig
    from megatron_vrft.trainer.data import SFTItems

    tok = build_tiny_tokenizer()
    ids = VisionTokenIds.from_tokenizer(tok)
    samples, _ = load_samples(root / "data.json", "llava_conv", root, video_options=VIDEO)
    dataset = SampleDataset(samples, tok, RopeIndexConfig(image_token_id=ids.image_pad, video_token_id=ids.video_pad))
    if mode != "raw":
        dataset = SFTItems(dataset, torch.bfloat16 if mode == "sft_bf16" else torch.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    item = dataset[(0, 0)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert item.ok, item.skip_detail
    return {"mode": mode, "frames": int(item.sequence.video_grid_thw[0, 0]) * 2,
            "grid": item.sequence.video_grid_thw[0].tolist(), "tokens": len(item.sequence),
            "peak_rss_mib": (peak - base) / 1024, "shipped_mib": _tensor_bytes(item) / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--measure", nargs=2, metavar=("ROOT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_video(root / "long.mp4", args.width, args.height)
        record = {"id": "long", "video": "long.mp4",
                  "conversations": [{"from": "human", "value": "<video>\nWhat happens?"},
                                    {"from": "gpt", "value": "Noise, for 128 seconds."}]}
        (root / "data.json").write_text(json.dumps([record]))
        for mode in ("raw", "sft_fp32", "sft_bf16"):
            out = subprocess.run([sys.executable, __file__, "--measure", str(root), mode], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{r['mode']:9s} {r['frames']} frames grid {r['grid']} ({r['tokens']} tokens): "
                  f"peak RSS +{r['peak_rss_mib']:.0f} MiB, shipped {r['shipped_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

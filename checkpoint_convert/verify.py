"""Check a converted mcore checkpoint against its HF source: same logits on a text+image+video batch.

    torchrun --nproc-per-node 4 checkpoint_convert/verify.py --hf-dir /models/Qwen2.5-VL-7B-Instruct \
        --mcore-dir /ckpt/qwen25vl-7b-mcore --tp 2 --pp 2 [--first-stage-layers N] [--tol 1e-4] [--dtype fp32]

The TP/PP given here may differ from the checkpoint's (the loader reshards), so this also checks
loading at another layout. Rank 0 runs transformers' ``Qwen2_5_VLForConditionalGeneration`` on a
deterministic batch (two samples: text, an image, a 2-frame video), then every rank builds this
TP x PP stage of ``Qwen25VLModel``, loads the checkpoint and runs the same batch (same 3-D mRoPE
positions, taken from HF's ``get_rope_index``) through mcore's pipeline schedule. The last line is
``max_abs_logit_diff=<x>``; the exit status is 1 when it exceeds ``--tol`` (or is NaN), 2 on bad
input. Runs on CPU (gloo) or GPU (nccl); fp32 by default, where 1e-4 is a tight bound.
"""

import argparse
import math
import os
import sys
import warnings

# mcore warns once per module on a machine without TE/Apex (any CPU); the local fallbacks are what
# this check runs, so the warnings say nothing to its user.
warnings.filterwarnings("ignore", message=".*(Transformer Engine and )?Apex (is|are) not installed.*")
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron_vrft.checkpoint.convert import check_same_model, run_cli  # noqa: E402
from megatron_vrft.checkpoint.hf_io import read_hf_config  # noqa: E402
from megatron_vrft.checkpoint.mcore_io import McoreCheckpoint, load_mcore_checkpoint  # noqa: E402
from megatron_vrft.models.qwen2_5_vl import weights as W  # noqa: E402
from megatron_vrft.models.qwen2_5_vl.config import validate_parallelism  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def verification_batch(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two right-aligned samples: text, a 56x84 px image, text, a 2-frame 56x56 px video, text; and
    text, a 56x56 px image, text. Shapes as HF's processor outputs (see ``tiny_qwen.tiny_vl_batch``)."""
    vc = cfg.vision_config
    merge = vc.spatial_merge_size
    gen = torch.Generator().manual_seed(seed)
    special = {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id}
    pool = torch.tensor([i for i in range(min(cfg.text_config.vocab_size, 4096)) if i not in special])

    def text(n):
        return pool[torch.randint(0, len(pool), (n,), generator=gen)].tolist()

    def media(token, grid):
        return [cfg.vision_start_token_id] + [token] * (math.prod(grid) // merge**2) + [cfg.vision_end_token_id]

    img, vid = [(1, 4, 6), (1, 4, 4)], [(2, 4, 4)]
    s0 = text(5) + media(cfg.image_token_id, img[0]) + text(4) + media(cfg.video_token_id, vid[0]) + text(3)
    s1 = text(3) + media(cfg.image_token_id, img[1]) + text(6)
    s1 += text(len(s0) - len(s1))
    ids = torch.tensor([s0, s1])
    mm = torch.zeros_like(ids)
    mm[ids == cfg.image_token_id] = 1
    mm[ids == cfg.video_token_id] = 2
    patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    return {
        "input_ids": ids,
        "mm_token_type_ids": mm,
        "pixel_values": torch.randn(sum(math.prod(g) for g in img), patch, generator=gen),
        "image_grid_thw": torch.tensor(img),
        "pixel_values_videos": torch.randn(sum(math.prod(g) for g in vid), patch, generator=gen),
        "video_grid_thw": torch.tensor(vid),
        "second_per_grid_ts": torch.tensor([1.0]),
    }


def hf_reference(hf_dir: str, batch: dict, dtype: torch.dtype, device: torch.device):
    """``(logits [B, S, V] float32 on CPU, position_ids [3, B, S])`` from transformers."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=dtype, attn_implementation="eager")
    hf = hf.to(device).eval()
    on_dev = {k: v.to(device) for k, v in batch.items()}
    on_dev["pixel_values"] = on_dev["pixel_values"].to(dtype)
    on_dev["pixel_values_videos"] = on_dev["pixel_values_videos"].to(dtype)
    with torch.no_grad():
        logits = hf(**on_dev).logits.float().cpu()
        pos, _ = hf.model.get_rope_index(on_dev["input_ids"], on_dev["mm_token_type_ids"], on_dev["image_grid_thw"],
                                         on_dev["video_grid_thw"], on_dev["second_per_grid_ts"])
    return logits, pos.cpu()


def mcore_logits(model, batch: dict, position_ids: torch.Tensor, dtype: torch.dtype, device: torch.device):
    """This stage's forward through mcore's schedule; the last stage returns gathered logits [B, S, V]."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    inputs = dict(
        input_ids=batch["input_ids"].to(device),
        position_ids=position_ids.to(device),
        pixel_values=batch["pixel_values"].to(device, dtype),
        image_grid_thw=batch["image_grid_thw"].to(device),
        pixel_values_videos=batch["pixel_values_videos"].to(device, dtype),
        video_grid_thw=batch["video_grid_thw"].to(device),
    )

    def forward_step(_data_iterator, m):
        return m(**inputs, runtime_gather_output=True), lambda out, non_loss_data=False: out

    b, s = batch["input_ids"].shape
    with torch.no_grad():
        collected = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([None]), model=[model], num_microbatches=1,
            seq_length=s, micro_batch_size=b, forward_only=True, collect_non_loss_data=True)
    return collected[0].float().cpu() if model.post_process else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf-dir", required=True, help="the HF checkpoint the mcore one was converted from")
    ap.add_argument("--mcore-dir", required=True, help="mcore checkpoint dir (any saved TP/PP)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size to load at")
    ap.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to load at")
    ap.add_argument("--first-stage-layers", type=int, default=None, help="LLM layers on PP stage 0")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="compute dtype of both models")
    ap.add_argument("--tol", type=float, default=1e-4, help="max allowed |logit difference| (default 1e-4)")
    a = ap.parse_args()

    from megatron_vrft.models.qwen2_5_vl.model import Qwen25VLModel
    from megatron_vrft.runtime import destroy_distributed, init_distributed

    dtype = DTYPES[a.dtype]
    raw, hf_cfg = read_hf_config(a.hf_dir)
    ckpt = McoreCheckpoint(a.mcore_dir)
    check_same_model(ckpt.config, hf_cfg, Path(a.hf_dir))
    # every user error before the process group exists: one ``error:`` line per rank, exit 2
    validate_parallelism(ckpt.config, a.tp, a.pp, a.first_stage_layers)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % (a.tp * a.pp):
        raise W.ParallelSizeError(f"world size {world} (torchrun --nproc-per-node) is not a multiple of "
                                  f"--tp {a.tp} x --pp {a.pp}")
    info = init_distributed(tp=a.tp, pp=a.pp)
    try:
        batch = verification_batch(hf_cfg)
        ref = [None, None]
        if info.rank == 0:
            ref = list(hf_reference(a.hf_dir, batch, dtype, info.device))
        dist.broadcast_object_list(ref, src=0)
        ref_logits, position_ids = ref
        model = Qwen25VLModel(ckpt.config, first_stage_layers=a.first_stage_layers, params_dtype=dtype,
                              perform_initialization=False).to(info.device)
        load_mcore_checkpoint(model, a.mcore_dir, first_stage_layers=a.first_stage_layers)
        model.eval()
        logits = mcore_logits(model, batch, position_ids, dtype, info.device)
        diff = torch.zeros((), dtype=torch.float64, device=info.device)
        if logits is not None:
            d = (logits.double() - ref_logits.double()).abs().max()
            diff.fill_(float("inf") if torch.isnan(d) else d.item())
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        value = diff.item()
        if info.rank == 0:
            print(f"hf logits scale={ref_logits.abs().max().item():.4g} tp={a.tp} pp={a.pp} "
                  f"checkpoint tp={ckpt.tp} pp={ckpt.pp} dtype={a.dtype} tol={a.tol:g}")
            print(f"max_abs_logit_diff={value:.6g}", flush=True)
    finally:
        destroy_distributed()
    if not value <= a.tol:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)

"""HF vs mcore parity for Qwen2.5-VL: the references (computed with transformers) and the distributed
worker that checks ``Qwen25VLModel`` against them at several TP x PP splits in one process group.

``hf_reference(shape)`` runs a tiny random HF model on a text + image + video batch: logits, the
ViT output, the loss of one backward step and every parameter's gradient. ``parity_worker`` (run by
``testing.spawn.run_distributed``) loops over ``(tp, pp, first_stage_layers)`` splits, re-creating
mcore's parallel state between them, and for each split builds the model, loads the HF weights with
``live.load_into_model`` and runs forward (and forward + backward) through mcore's
``get_forward_backward_func`` with mcore DDP and ``finalize_model_grads`` (so tied embeddings under
PP are reduced the way training reduces them). It returns max-abs differences; tests assert on them.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Optional

import torch

from megatron_vrft.testing.tiny_qwen import TINY_SHAPES, tiny_hf_config, tiny_hf_model, tiny_vl_batch

__all__ = ["HFReference", "hf_reference", "mcore_position_ids", "shifted_labels", "parity_worker", "run_split"]


@dataclass
class HFReference:
    """What transformers computes for one tiny shape (all float32, CPU)."""

    shape: str
    state: dict[str, torch.Tensor]
    batch: dict[str, torch.Tensor]
    position_ids: torch.Tensor  # [3, B, S] from megatron_vrft's rope_index
    hf_position_ids: torch.Tensor  # [3, B, S] from HF get_rope_index
    labels: torch.Tensor  # [B, S] aligned with the logits (shifted), -100 = ignored
    logits: torch.Tensor  # [B, S, V]
    vit: torch.Tensor  # [images' + videos' merged tokens, H]
    loss: float
    grads: dict[str, torch.Tensor] = field(default_factory=dict)  # canonical HF name -> grad


def mcore_position_ids(hf_config, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[3, B, S]`` mRoPE ids, per sample with ``rope_index.get_rope_index`` in transformers 5.23's
    convention (what the HF forward that serves as reference computes)."""
    from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig, get_rope_index

    rc = RopeIndexConfig.from_hf_config(hf_config, mode="hf_5_23")
    merge = hf_config.vision_config.spatial_merge_size
    grids = {"image": list(batch["image_grid_thw"]), "video": list(batch["video_grid_thw"])}
    seconds = list(batch["second_per_grid_ts"])
    out = []
    for ids in batch["input_ids"]:
        mine = {}
        for kind, token in (("image", rc.image_token_id), ("video", rc.video_token_id)):
            n_tokens, taken = int((ids == token).sum()), []
            while n_tokens > 0:
                g = grids[kind].pop(0)
                taken.append(g)
                n_tokens -= int(g.prod()) // merge**2
            mine[kind] = torch.stack(taken) if taken else None
        n_vid = 0 if mine["video"] is None else len(mine["video"])
        sec = torch.stack([seconds.pop(0) for _ in range(n_vid)]) if n_vid else None
        out.append(get_rope_index(ids, rc, mine["image"], mine["video"], sec)[0])
    return torch.stack(out, dim=1)


def shifted_labels(input_ids: torch.Tensor, media_ids: tuple[int, ...]) -> torch.Tensor:
    """HF-style labels (the input ids, media pads ignored) shifted to align with each position's
    logits: mcore computes the loss of position s against ``labels[:, s]``."""
    labels = input_ids.clone()
    for t in media_ids:
        labels[labels == t] = -100
    out = torch.full_like(labels, -100)
    out[:, :-1] = labels[:, 1:]
    return out


def hf_reference(shape: str, seed: int = 0) -> HFReference:
    """Runs the tiny HF model of ``TINY_SHAPES[shape]`` once forward (no grad) and once with loss."""
    from megatron_vrft.models.qwen2_5_vl.weights import read_hf_key

    hf = tiny_hf_model(seed=seed, **TINY_SHAPES[shape])
    cfg = hf.config
    batch = tiny_vl_batch(cfg, seed=seed)
    media = (cfg.image_token_id, cfg.video_token_id)
    with torch.no_grad():
        logits = hf(**batch).logits
        hf_pos, _ = hf.model.get_rope_index(
            batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"], batch["video_grid_thw"],
            batch["second_per_grid_ts"],
        )
        vit = torch.cat([
            hf.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output,
            hf.model.visual(batch["pixel_values_videos"], grid_thw=batch["video_grid_thw"]).pooler_output,
        ])
    hf_labels = batch["input_ids"].clone()
    for t in media:
        hf_labels[hf_labels == t] = -100
    loss = hf(**batch, labels=hf_labels).loss
    loss.backward()
    return HFReference(
        shape=shape,
        state={k: v.detach().clone() for k, v in hf.state_dict().items()},
        batch=batch,
        position_ids=mcore_position_ids(cfg, batch),
        hf_position_ids=hf_pos,
        labels=shifted_labels(batch["input_ids"], media),
        logits=logits,
        vit=vit,
        loss=loss.item(),
        grads={read_hf_key(n): p.grad.detach().clone() for n, p in hf.named_parameters()},
    )


def _set_parallel(tp: int, pp: int, seed: int = 1234) -> None:
    """(Re-)initialises mcore's model-parallel groups on the existing process group."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_vrft.runtime import init_distributed

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        model_parallel_cuda_manual_seed(seed)
    else:
        init_distributed(tp, pp, seed=seed)


def _model_inputs(ref: HFReference) -> dict:
    b = ref.batch
    return dict(
        input_ids=b["input_ids"],
        position_ids=ref.position_ids,
        pixel_values=b["pixel_values"],
        image_grid_thw=b["image_grid_thw"],
        pixel_values_videos=b["pixel_values_videos"],
        video_grid_thw=b["video_grid_thw"],
    )


def _schedule(model, ref: HFReference, *, forward_only: bool, **kwargs):
    """One micro-batch through mcore's pipeline schedule; returns the last stage's collected data."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    inputs = _model_inputs(ref)
    labels = None if forward_only else ref.labels
    n_valid = int((ref.labels >= 0).sum())

    def forward_step(data_iterator, m):
        out = m(**inputs, labels=labels, runtime_gather_output=forward_only)

        def loss_func(output, non_loss_data=False):
            if non_loss_data:
                return output
            loss = output.sum() / n_valid
            return loss, {"loss": loss.detach()}

        return out, loss_func

    b, s = ref.batch["input_ids"].shape
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=[model],
        num_microbatches=1,
        seq_length=s,
        micro_batch_size=b,
        forward_only=forward_only,
        collect_non_loss_data=forward_only,
        **kwargs,
    )


def _packed_and_padding_checks(model, ref: HFReference) -> dict:
    """PP=1 only (called directly, not through the schedule):
    - ``packed``: both samples packed into one THD row ``[1, 2S]`` (``cu_seqlens`` per sample) vs
      the HF logits of the unpacked batch;
    - ``padding_masked``: this TP rank's vocabulary-padding logits all equal ``MASKED_LOGIT``
      (True when the rank holds no padding)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    from megatron_vrft.models.qwen2_5_vl.model import MASKED_LOGIT

    inputs = _model_inputs(ref)
    b, s = inputs["input_ids"].shape
    cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32)
    packed_inputs = dict(
        inputs,
        input_ids=inputs["input_ids"].reshape(1, b * s),
        position_ids=inputs["position_ids"].reshape(3, 1, b * s),
        packed_seq_params=PackedSeqParams(
            qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=s, max_seqlen_kv=s
        ),
    )
    packed = model(**packed_inputs, runtime_gather_output=True).reshape(b, s, -1)
    local = model(**inputs)
    pad_cols = torch.arange(local.shape[-1]) + local.shape[-1] * _tp_rank() >= model.mcore_config.vocab_size
    return {
        "packed": (packed - ref.logits).abs().max().item(),
        "padding_masked": bool((local[..., pad_cols] == MASKED_LOGIT).all()),
        "padding_columns": int(pad_cols.sum()),
    }


def _tp_rank() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank()


def run_split(ref: HFReference, tp: int, pp: int, first_stage_layers: Optional[int] = None) -> dict:
    """Checks one TP x PP split against ``ref`` on this rank; returns this rank's max-abs diffs:
    ``logits`` (last stage), ``vit`` (first stage), ``loss`` (last stage), ``grads`` {name: diff}
    and ``grad_scale`` (largest HF gradient entry)."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from megatron_vrft.models.qwen2_5_vl.live import load_into_model
    from megatron_vrft.models.qwen2_5_vl.model import Qwen25VLModel
    from megatron_vrft.models.qwen2_5_vl.weights import hf_to_mcore

    _set_parallel(tp, pp)
    cfg = tiny_hf_config(**TINY_SHAPES[ref.shape])
    model = Qwen25VLModel(cfg, first_stage_layers=first_stage_layers, perform_initialization=False)
    load_into_model(model, ref.state, cfg, first_stage_layers=first_stage_layers)
    result: dict = {"tp": tp, "pp": pp, "stage": ps.get_pipeline_model_parallel_rank(), "grads": {}}

    model.eval()
    with torch.no_grad():
        if model.pre_process:
            b = ref.batch
            vit = model.vision_model(
                torch.cat([b["pixel_values"], b["pixel_values_videos"]]),
                torch.cat([b["image_grid_thw"], b["video_grid_thw"]]),
            )
            result["vit"] = (vit - ref.vit).abs().max().item()
        collected = _schedule(model, ref, forward_only=True)
        if pp == 1:
            result.update(_packed_and_padding_checks(model, ref))
    if model.post_process:
        (logits,) = collected
        result["logits"] = (logits - ref.logits).abs().max().item()

    model.config.finalize_model_grads_func = finalize_model_grads
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
    ddp.train()
    ddp.zero_grad_buffer()
    losses = _schedule(ddp, ref, forward_only=False)
    if model.post_process:
        result["loss"] = abs(losses[0]["loss"].item() - ref.loss)
    expected = dict(
        hf_to_mcore(ref.grads.__getitem__, cfg, tp_rank=ps.get_tensor_model_parallel_rank(), tp_size=tp,
                    pp_rank=ps.get_pipeline_model_parallel_rank(), pp_size=pp, first_stage_layers=first_stage_layers)
    )
    for name, p in model.named_parameters():
        result["grads"][name] = (p.main_grad - expected[name]).abs().max().item()
    result["grad_scale"] = max(g.abs().max().item() for g in ref.grads.values())
    return result


def parity_worker(rank: int, cases: list[tuple[HFReference, list[tuple[int, int, Optional[int]]]]]) -> list[dict]:
    """For every ``(reference, splits)`` case and every ``(tp, pp, first_stage_layers)`` split of it
    (tp*pp dividing the world size; the rest is data parallel), this rank's ``run_split`` result.

    A split that raises yields ``{"error": traceback}`` instead, so one failing split is reported by
    its own test while the others still run (the failure happens on every rank of the split alike:
    model construction and the forward are SPMD, so no rank is left waiting in a collective).
    """
    from megatron_vrft.runtime import destroy_distributed

    results = []
    try:
        for ref, splits in cases:
            for split in splits:
                try:
                    results.append(dict(run_split(ref, *split), shape=ref.shape))
                except Exception:  # noqa: BLE001 - reported to the test of this split
                    results.append({"shape": ref.shape, "tp": split[0], "pp": split[1], "error": traceback.format_exc()})
        return results
    finally:
        destroy_distributed()

"""``load_into_model``, ``export_hf_state`` and the mcore checkpoint save/load on gloo at TP=2 and at
PP=2 (two processes; TP=1 there: the export's no-gather path): a checkpoint saved at TP=2 is loaded
(resharded) at PP=2 and at TP=2 again.

The model here is a stand-in with exactly the contract's parameter names and this rank's shard
shapes (``mcore_shapes``), so the collective gather/broadcast logic is tested independently of the
mcore model; the model's own parity tests load the real ``Qwen25VLModel`` with the same function.
"""

from pathlib import Path

import torch

from megatron_vrft.testing.spawn import run_distributed
from megatron_vrft.testing.tiny_qwen import TINY_SHAPES, tiny_hf_model


def _stand_in_model(shapes):
    root = torch.nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, torch.nn.Parameter(torch.full(shape, float("nan"))))
    return root


def load_and_export(rank, cfg_dict, sd, ckpt_dir):
    from megatron_vrft.runtime import destroy_distributed

    torch.set_num_threads(1)
    try:
        return [_load_and_export_layout(cfg_dict, sd, tp, pp, ckpt_dir) for tp, pp in ((2, 1), (1, 2), (2, 1))]
    finally:
        destroy_distributed()


def _load_and_export_layout(cfg_dict, sd, tp, pp, ckpt_dir):
    from megatron.core import parallel_state as ps

    from megatron_vrft.checkpoint.mcore_io import load_mcore_checkpoint, save_mcore_checkpoint

    from megatron_vrft.models.qwen2_5_vl import live
    from megatron_vrft.models.qwen2_5_vl import weights as W
    from megatron_vrft.runtime import init_distributed

    cfg = W.as_hf_config(cfg_dict)
    init_distributed(tp=tp, pp=pp)
    try:
        tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
        shapes = W.mcore_shapes(cfg, tp_rank=tp_rank, tp_size=tp, pp_rank=pp_rank, pp_size=pp)
        model = _stand_in_model(shapes)
        live.load_into_model(model, sd, cfg)
        canon = {W.read_hf_key(k): v for k, v in sd.items()}
        expected = dict(W.hf_to_mcore(canon.__getitem__, cfg, tp_rank=tp_rank, tp_size=tp, pp_rank=pp_rank, pp_size=pp))
        loaded_ok = all(torch.equal(p, expected[n]) for n, p in model.state_dict().items())
        exported = dict(live.export_hf_state(model, cfg))
        want = set(W.hf_shapes(cfg))
        export_ok = set(exported) == want and all(torch.equal(exported[n], canon[n]) for n in want)
        # the yielded tensors are the export's own (at TP=1 too, where nothing is gathered)
        storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        export_ok &= not any(t.untyped_storage().data_ptr() in storages for t in exported.values())
        from_disk = _stand_in_model(shapes)
        if tp == 2 and not (Path(ckpt_dir) / "COMPLETE").exists():
            save_mcore_checkpoint(model, ckpt_dir, cfg)
        load_mcore_checkpoint(from_disk, ckpt_dir)  # direct at TP=2, resharded at PP=2
        loaded_ok &= all(torch.equal(p, expected[n]) for n, p in from_disk.state_dict().items())
        strict_msg = ""
        if pp_rank == pp - 1:  # a parameter the map does not know -> strict error naming it
            model.language_model.decoder.final_layernorm.register_parameter(
                "bias", torch.nn.Parameter(torch.zeros(1)))
            try:
                live.load_into_model(model, sd, cfg)
            except W.MissingWeightError as e:
                strict_msg = str(e)
        return loaded_ok, export_ok, strict_msg, pp_rank == pp - 1
    finally:
        ps.destroy_model_parallel()  # keep the process group: the next layout reuses it


def test_load_and_export_tp2_and_pp2(tmp_path):
    """Tied + MQA: at PP=2 the last stage's output layer is loaded from embed_tokens; TP=2 > 1 KV head."""
    hf = tiny_hf_model(seed=0, **TINY_SHAPES["tied_mqa"])
    sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}  # transformers-5 in-memory names
    per_rank = run_distributed(load_and_export, world_size=2, args=(hf.config.to_dict(), sd, str(tmp_path / "ck")),
                               timeout=240)
    for layouts in per_rank:
        for loaded_ok, export_ok, strict_msg, last_stage in layouts:
            assert loaded_ok and export_ok
            assert ("language_model.decoder.final_layernorm.bias" in strict_msg) == last_stage

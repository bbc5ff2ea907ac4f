"""Initial weights and the HF export, through ``examples/run_sft.py`` and ``trainer.setup.build``.

Stage 1 trains 2 steps at TP=2 (2 gloo processes), saves, and exports ``out/hf``. Then:
- the export loads with ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` (+ its tokenizer) and
  gives the logits of the trained mcore model (loaded from stage 1's checkpoint at TP=1) on a text +
  image + video batch: max abs diff <= LOGIT_TOL in fp32;
- stage 2 with ``checkpoint.pretrained_path`` = stage 1's save_dir, its step_2 dir, or the exported
  HF dir starts from stage 1's weights, checked by value (and they differ from the base model's);
- a wrong ``pretrained_path`` (missing, incomplete, other architecture, not a checkpoint) is one
  line naming the path and the problem; through run_sft.py it exits 2 and writes nothing.
"""

import json
import shutil

import pytest
import torch

from megatron_vrft.testing.spawn import run_distributed
from tests.trainer._sft_runs import make_assets, run_sft, write_config

LOGIT_TOL = 1e-4


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    assets = make_assets(root / "assets")
    cfg = write_config(root / "sft.yaml", assets, root, sft={"max_steps": 2},
                       checkpoint={"save_interval": 2, "export_hf": True})
    run_sft(cfg, ["parallel.tp=2"], nproc=2)
    return root, assets


def _batch(hf_config):
    """One sample: text, a 56x56 image (grid 1x4x4 -> 4 tokens), text, a 4-frame 56x56 video
    (grid 2x4x4 -> 8 tokens), text; HF-style inputs."""
    vc = hf_config.vision_config
    g = torch.Generator().manual_seed(0)

    def text(n):
        return torch.randint(0, 200, (n,), generator=g).tolist()

    ids = (text(5) + [hf_config.vision_start_token_id] + [hf_config.image_token_id] * 4 + [hf_config.vision_end_token_id]
           + text(3) + [hf_config.vision_start_token_id] + [hf_config.video_token_id] * 8
           + [hf_config.vision_end_token_id] + text(4))
    input_ids = torch.tensor([ids])
    mm = torch.zeros_like(input_ids)
    mm[input_ids == hf_config.image_token_id] = 1
    mm[input_ids == hf_config.video_token_id] = 2
    patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    return {"input_ids": input_ids, "mm_token_type_ids": mm,
            "pixel_values": torch.randn(16, patch, generator=g), "image_grid_thw": torch.tensor([[1, 4, 4]]),
            "pixel_values_videos": torch.randn(32, patch, generator=g), "video_grid_thw": torch.tensor([[2, 4, 4]]),
            "second_per_grid_ts": torch.tensor([1.0])}


def _stage2_worker(rank, config, pretrained_paths):
    """For each pretrained_path: build the run (TP=1, 1 process) and return its weights (HF names)
    and the mcore logits on ``_batch``."""
    from megatron_vrft.config import load_config
    from megatron_vrft.models.qwen2_5_vl.live import export_hf_state
    from megatron_vrft.runtime import destroy_distributed
    from megatron_vrft.testing.parity import mcore_position_ids
    from megatron_vrft.trainer.setup import build

    torch.set_num_threads(1)
    out = []
    try:
        for path in pretrained_paths:
            overrides = [] if path is None else [f"checkpoint.pretrained_path={path}"]
            run = build(load_config(str(config), overrides + ["checkpoint.save_dir=null"]))
            model = run.model[0].module
            weights = {n: t.clone() for n, t in export_hf_state(model, run.hf_config)}
            b = _batch(run.hf_config)
            model.eval()
            with torch.no_grad():
                logits = model(input_ids=b["input_ids"], position_ids=mcore_position_ids(run.hf_config, b),
                               pixel_values=b["pixel_values"], image_grid_thw=b["image_grid_thw"],
                               pixel_values_videos=b["pixel_values_videos"], video_grid_thw=b["video_grid_thw"],
                               runtime_gather_output=True)
            out.append((weights, logits, run.weights_from))
        return out
    finally:
        destroy_distributed()


@pytest.fixture(scope="module")
def stage2(stage1):
    root, assets = stage1
    cfg = write_config(root / "stage2.yaml", assets, root / "stage2")
    paths = [None, root / "ckpt", root / "ckpt" / "step_2", root / "out" / "hf"]
    return run_distributed(_stage2_worker, 1, (cfg, [None if p is None else str(p) for p in paths]), timeout=240)[0]


def test_export_hf_loads_and_gives_the_trained_logits(stage1, stage2):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    root, _ = stage1
    hf_dir = root / "out" / "hf"
    names = sorted(p.name for p in hf_dir.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(names), names
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(hf_dir) is not None
    with torch.no_grad():
        ref = hf(**_batch(hf.config)).logits
    _, mcore_logits, _ = stage2[1]  # loaded from stage 1's checkpoint: the trained weights
    diff = (ref - mcore_logits).abs().max().item()
    print(f"exported HF vs trained mcore logits: max abs diff {diff:.3g} (fp32, CPU)")
    assert diff <= LOGIT_TOL
    # the export holds the TRAINED weights, not the initial ones
    _, base_logits, _ = stage2[0]
    assert (ref - base_logits).abs().max().item() > 100 * LOGIT_TOL


def test_stage2_starts_from_stage1_weights(stage2):
    base, from_save_dir, from_step_dir, from_hf = stage2
    assert "trainer weights" in from_save_dir[2] and "step_2" in from_save_dir[2]
    assert from_hf[2].startswith("hf weights")
    for other in (from_step_dir, from_hf):
        assert other[0].keys() == from_save_dir[0].keys()
        for name, t in from_save_dir[0].items():
            assert torch.equal(t, other[0][name]), name
    changed = [n for n, t in from_save_dir[0].items() if not torch.equal(t, base[0][n])]
    assert len(changed) == len(base[0]), "every tensor trained in stage 1 should differ from the base model"


def _resolve(cfg_path, path):
    from megatron_vrft.config import load_config
    from megatron_vrft.trainer.weights_io import resolve_initial_weights

    cfg = load_config(str(cfg_path), [f"checkpoint.pretrained_path={path}"])
    from megatron_vrft.checkpoint.hf_io import read_hf_config

    return resolve_initial_weights(cfg, read_hf_config(cfg.model.hf_path)[1])


def test_wrong_pretrained_paths_are_one_line_errors(stage1, tmp_path):
    from megatron_vrft.trainer.weights_io import PretrainedPathError

    root, assets = stage1
    cfg = write_config(tmp_path / "sft.yaml", assets, tmp_path)
    incomplete = tmp_path / "incomplete" / "step_2"
    shutil.copytree(root / "ckpt" / "step_2", incomplete)
    (incomplete / "COMPLETE").unlink()
    other_arch = make_assets(tmp_path / "other", tied=True)["hf"]
    not_ckpt = tmp_path / "not_a_checkpoint"
    not_ckpt.mkdir()
    (not_ckpt / "notes.txt").write_text("hello")
    cases = {
        tmp_path / "missing": "does not exist",
        incomplete: "incomplete (no COMPLETE marker",
        incomplete.parent: "no complete trainer checkpoint",
        other_arch: "another architecture than the run's model: tied True (run: False)",
        not_ckpt: "is not a trainer checkpoint",
    }
    for path, problem in cases.items():
        with pytest.raises(PretrainedPathError) as e:
            _resolve(cfg, path)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"checkpoint.pretrained_path={path}: ") and problem in msg, msg
    # a save_dir whose newest step is incomplete but an older one is complete: the complete one
    assert _resolve(cfg, root / "ckpt")[2] == root / "ckpt" / "step_2"
    # a real save carries atomic_dir's owner file: rotation's and atomic_dir's "is ours" rule
    from megatron_vrft.checkpoint.atomic import OWNER
    from megatron_vrft.trainer.checkpoint import is_trainer_checkpoint

    assert (root / "ckpt" / "step_2" / OWNER).is_file() and is_trainer_checkpoint(root / "ckpt" / "step_2")


def test_wrong_pretrained_path_exits_nonzero_and_writes_nothing(stage1, tmp_path):
    _, assets = stage1
    cfg = write_config(tmp_path / "sft.yaml", assets, tmp_path)
    p = run_sft(cfg, [f"checkpoint.pretrained_path={tmp_path / 'nope'}"], check=False)
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: checkpoint.pretrained_path={tmp_path / 'nope'}: does not exist"], p.stderr[-2000:]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["sft.yaml"]  # no out/, no ckpt/

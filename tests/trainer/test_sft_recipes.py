"""Every tiny CPU recipe (examples/configs/tiny/*.yaml) trains for two steps through ``run_sft.main``,
in the recipe's own data format, with the recipe's per-module LRs; stage 2 starts from stage 1's
export; the RLinf recipe's eval-only mode runs without training.

The configs' relative paths (outputs/tiny/...) are prepared in a temporary working directory exactly
as their headers say (tools/make_tiny_model.py --tokenizer, tools/make_synthetic.py).
"""

import importlib.util
import os

import pytest

from megatron_vrft.testing.sft_run import ROOT, write_tiny_model
from megatron_vrft.testing.spawn import run_distributed

RECIPES = ["rbft_sft_stage1", "rbft_sft_stage2", "rlinf_robo2vlm_sft", "video_r2_sft"]


def _worker(rank, workdir):
    from megatron.core import parallel_state as ps

    from megatron_vrft.trainer.metrics import read_metrics

    spec = importlib.util.spec_from_file_location("run_sft", ROOT / "examples/run_sft.py")
    run_sft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_sft)
    os.chdir(workdir)
    out = {}
    jobs = [(r, r, []) for r in RECIPES] + [("rlinf_robo2vlm_sft", "eval_only", ["sft.eval_only=true"])]
    for recipe, name, extra in jobs:
        overrides = ["sft.max_steps=2", *extra]
        if name != "rbft_sft_stage1":  # stage 1's export is stage 2's pretrained_path
            overrides += ["checkpoint.export_hf=false", "checkpoint.save_dir=null"]
        if name == "eval_only":
            overrides.append("logging.output_dir=outputs/tiny/eval_only")
        config = ROOT / f"examples/configs/tiny/{recipe}.yaml"
        code = run_sft.main(["--config", str(config), *overrides])
        cfg = run_sft.load_config(str(config), overrides)
        out[name] = (code, read_metrics(workdir / cfg.logging.output_dir) if code == 0 else [])
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from megatron_vrft.data.synthetic import make_synthetic

    work = tmp_path_factory.mktemp("recipes")
    write_tiny_model(work / "outputs/tiny/hf")
    make_synthetic(work / "outputs/tiny/data", num=8)
    (res,) = run_distributed(_worker, 1, (work,), timeout=400)
    return res


@pytest.mark.parametrize("recipe", RECIPES)
def test_tiny_recipe_trains(runs, recipe):
    code, records = runs[recipe]
    steps = [r for r in records if "loss" in r]
    assert code == 0 and [r["step"] for r in steps] == [1, 2]
    assert all(r["samples"] == 4 and r["samples_skipped"] == 0 for r in steps)
    if recipe.startswith("rbft"):  # seed 000's per-module LRs (3% warmup of 2 steps is no warmup)
        want = {"rbft_sft_stage1": (1e-6, 1e-5, 2e-6), "rbft_sft_stage2": (1e-5, 1e-5, 2e-6)}[recipe]
        assert (steps[0]["lr"], steps[0]["lr/merger"], steps[0]["lr/vision"]) == pytest.approx(want, rel=1e-9)


def test_stage2_starts_from_stage1(runs):
    stage1 = [r["loss"] for r in runs["rbft_sft_stage1"][1] if "loss" in r]
    stage2 = [r["loss"] for r in runs["rbft_sft_stage2"][1] if "loss" in r]
    assert stage1 and stage2 and stage1[0] != stage2[0]


def test_eval_only_does_not_train(runs):
    code, records = runs["eval_only"]
    assert code == 0 and not [r for r in records if "loss" in r]
    assert [r for r in records if "eval/loss" in r]

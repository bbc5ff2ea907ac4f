"""Per-module learning rates, freezing and activation recomputation of the SFT trainer (one process).

- seed 000's LRs (LLM 1e-6, merger 1e-5, vision 2e-6): every optimizer param group's LR is its
  module's, and each module's parameters move after a step;
- freeze_vision + freeze_projector: the ViT and merger parameters are in no DDP bucket and no
  optimizer group, and stay bit-identical over two steps while the LLM's change;
- model.recompute full / selective: the same loss and grad norm as without recomputation (1e-6).
"""

import pytest
import torch

from megatron_vrft.testing.sft_run import write_tiny_sft
from megatron_vrft.testing.spawn import run_distributed

SEED000_LRS = {"llm": 1e-6, "merger": 1e-5, "vision": 2e-6}


def _build(path, overrides):
    from megatron.core import parallel_state as ps

    from megatron_vrft.config import load_config
    from megatron_vrft.trainer.setup import build

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    return build(load_config(str(path), overrides))


def _snapshot(run):
    return {n: p.detach().clone() for n, p in run.model[0].named_parameters()}


def _worker(rank, path):
    from megatron_vrft.trainer.optim import module_of
    from megatron_vrft.trainer.sft import sft_step

    out = {}
    run = _build(path, ["optimizer.lr=1e-6", "optimizer.merger_lr=1e-5", "optimizer.vision_lr=2e-6"])
    module = {id(p): module_of(n) for n, p in run.model[0].named_parameters()}
    out["group_lrs"] = sorted({(module[id(p)], g["lr"]) for g in run.optimizer.param_groups for p in g["params"]})
    before = _snapshot(run)
    sft_step(run, run.train.next_batch())
    after = _snapshot(run)
    out["moved"] = sorted({module_of(n) for n in before if not torch.equal(before[n], after[n])})

    run = _build(path, ["model.freeze_vision=true", "model.freeze_projector=true"])
    ddp = run.model[0]
    frozen = {n for n, p in ddp.named_parameters() if module_of(n) != "llm"}
    out["frozen_requires_grad"] = any(p.requires_grad for n, p in ddp.named_parameters() if n in frozen)
    bucketed = set(map(id, ddp.param_to_bucket_group))
    out["frozen_in_buckets"] = [n for n, p in ddp.named_parameters() if n in frozen and id(p) in bucketed]
    in_opt = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    out["frozen_in_optimizer"] = [n for n, p in ddp.named_parameters() if n in frozen and id(p) in in_opt]
    before = _snapshot(run)
    for _ in range(2):
        sft_step(run, run.train.next_batch())
    after = _snapshot(run)
    out["frozen_changed"] = [n for n in frozen if not torch.equal(before[n], after[n])]
    out["llm_changed"] = sum(not torch.equal(before[n], after[n]) for n in before if n not in frozen)

    for mode in ("none", "full", "selective"):
        run = _build(path, [f"model.recompute={mode}"])
        m = sft_step(run, run.train.next_batch())
        out[f"recompute_{mode}"] = (m["loss"], m["grad_norm"], run.model[0].config.recompute_granularity)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = write_tiny_sft(tmp_path_factory.mktemp("sft_modules"), optimizer={"lr_schedule": "constant"})
    (res,) = run_distributed(_worker, 1, (path,), timeout=300)
    return res


def test_each_module_trains_at_its_own_lr(results):
    assert results["group_lrs"] == sorted(SEED000_LRS.items())
    assert results["moved"] == ["llm", "merger", "vision"]


def test_frozen_modules_leave_ddp_and_optimizer_and_stay_bit_identical(results):
    assert not results["frozen_requires_grad"]
    assert results["frozen_in_buckets"] == []
    assert results["frozen_in_optimizer"] == []
    assert results["frozen_changed"] == []
    assert results["llm_changed"] > 0


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_recompute_gives_the_same_step(results, mode):
    (loss, norm, granularity), (ref_loss, ref_norm, none) = results[f"recompute_{mode}"], results["recompute_none"]
    assert granularity == mode and none is None
    assert loss == pytest.approx(ref_loss, abs=1e-6) and norm == pytest.approx(ref_norm, abs=1e-6)

"""The NaN/inf policy of the loop: a non-finite loss or grad norm skips the update (parameters and
the LR schedule untouched, ``update_skipped`` logged), and ``sft.max_nonfinite_steps`` such steps in
a row save a checkpoint and stop with `TrainingStopped`.

NaN word embeddings are planted in the model (the real forward/backward path then
produces a NaN loss and NaN gradients; nothing is mocked)."""

import pytest
import torch

from megatron_vrft.testing.sft_run import write_tiny_sft
from megatron_vrft.testing.spawn import run_distributed


def _worker(rank, path, save_dir):
    from megatron_vrft.config import load_config
    from megatron_vrft.trainer.loop import TrainingStopped, train
    from megatron_vrft.trainer.metrics import read_metrics
    from megatron_vrft.trainer.sft import sft_step
    from megatron_vrft.trainer.setup import build

    run = build(load_config(str(path), ["sft.max_nonfinite_steps=2", f"checkpoint.save_dir={save_dir}"]))
    params = dict(run.model[0].named_parameters())
    with torch.no_grad():
        params["module.language_model.embedding.word_embeddings.weight"][:].fill_(float("nan"))
    before = {n: p.detach().clone() for n, p in params.items()}
    stopped = None
    try:
        train(run, sft_step)
    except TrainingStopped as e:
        stopped = str(e)
    same = all(torch.equal(before[n], p) or (torch.isnan(before[n]).all() and torch.isnan(p).all())
               for n, p in params.items())
    return {"stopped": stopped, "params_unchanged": same, "scheduler_steps": run.scheduler.num_steps,
            "records": read_metrics(run.cfg.logging.output_dir), "saved": sorted(p.name for p in save_dir.iterdir())}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite")
    (res,) = run_distributed(_worker, 1, (write_tiny_sft(root), root / "ckpt"), timeout=300)
    return res


def test_nonfinite_steps_skip_the_update(result):
    steps = [r for r in result["records"] if "loss" in r]
    assert [r["update_skipped"] for r in steps] == [1, 1]
    assert all(r["loss"] == "nan" for r in steps)
    assert result["params_unchanged"] and result["scheduler_steps"] == 0


def test_too_many_in_a_row_save_and_stop(result):
    assert result["stopped"] is not None and "2 optimizer steps in a row" in result["stopped"]
    assert result["saved"] == ["step_2"]

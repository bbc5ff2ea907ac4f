"""Resume at another TP/PP/DP layout, with and without the distributed optimizer, through
``examples/run_sft.py`` on 2 gloo processes (tiny model, fp32 CPU; vocab 270 divides by 2).

A 4-step run saves at step 2; the step-2 checkpoint is then resumed at another layout and the
losses of steps 3 and 4 must equal the uninterrupted run's within TOL (fp32; the global batch and
its per-token normalisation are the same at every layout, only the reduction order differs).
Changing TP or PP on the same 2 processes changes DP (2 <-> 1): the data position in a checkpoint
is DP-independent (`ResumableSampler.global_state`), so the resumed run reads the same samples
(its steps have the uninterrupted run's token counts; `tests/trainer/test_sft_data.py` checks the
sample ids themselves, skipped samples included).
"""

import shutil

import pytest

from tests.trainer._sft_runs import losses, make_assets, run_sft, write_config

TOL = 1e-5


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def _full(assets, root, layout):
    cfg = write_config(root / "sft.yaml", assets, root, sft={"max_steps": 4})
    run_sft(cfg, layout, nproc=2)
    return cfg, losses(root)


def _resume_from_step2(assets, src, root, layout):
    (root / "ckpt").mkdir(parents=True)
    shutil.copytree(src / "ckpt" / "step_2", root / "ckpt" / "step_2")
    cfg = write_config(root / "sft.yaml", assets, root, sft={"max_steps": 4})
    p = run_sft(cfg, layout, nproc=2)
    assert "resumed from" in p.stderr
    return losses(root)


DOPT = "parallel.use_distributed_optimizer=true"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("saved, resumed", [
    (["parallel.tp=2"], ["parallel.pp=2"]),
    (["parallel.tp=2", DOPT], ["parallel.pp=2", DOPT]),
    ([DOPT], [DOPT]),
], ids=["tp2-to-pp2", "distopt-tp2-to-pp2", "distopt-dp2"])
def test_resume_at_other_layout_gives_same_losses(assets, tmp_path, saved, resumed):
    _, full = _full(assets, tmp_path / "full", saved)
    assert sorted(full) == [1, 2, 3, 4]
    got = _resume_from_step2(assets, tmp_path / "full", tmp_path / "resumed", resumed)
    assert sorted(got) == [3, 4], got
    # step 3 checks the weights, step 4 the optimizer state (Adam moments and step count)
    diff = max(abs(got[s] - full[s]) for s in (3, 4))
    assert diff <= TOL, (got, full)


def _records(root) -> dict[int, dict]:
    from megatron_vrft.trainer.metrics import read_metrics

    return {r["step"]: r for r in read_metrics(root / "out") if "loss" in r}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("saved, resumed", [
    ([], ["parallel.tp=2"]),
    ([], ["parallel.pp=2"]),
    (["parallel.tp=2"], []),
], ids=["dp2-to-tp2", "dp2-to-pp2", "tp2-to-dp2"])
def test_resume_at_another_dp_size_reads_the_same_samples(assets, tmp_path, saved, resumed):
    _full(assets, tmp_path / "full", saved)
    _resume_from_step2(assets, tmp_path / "full", tmp_path / "resumed", resumed)
    full, got = _records(tmp_path / "full"), _records(tmp_path / "resumed")
    assert sorted(got) == [3, 4], got
    for s in (3, 4):
        assert (got[s]["samples"], got[s]["tokens"], got[s]["target_tokens"]) == \
            (full[s]["samples"], full[s]["tokens"], full[s]["target_tokens"]), (s, got[s], full[s])
        assert abs(got[s]["loss"] - full[s]["loss"]) <= TOL, (got, full)

"""metrics.jsonl / TensorBoard content, rank-0-only writing, resume rewind, timers, non-finite policy."""

import json
import math
import time

import pytest
import torch

from megatron_vrft.config import LoggingConfig
from megatron_vrft.trainer.metrics import METRICS_FILE, MetricsLogger, NonFiniteGuard, Timers, read_metrics


def _events(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_jsonl_and_tensorboard_content(tmp_path):
    cfg = LoggingConfig(output_dir=str(tmp_path), log_interval=2, progress_bar=True)
    log = MetricsLogger(cfg, rank=0, total_steps=4)
    for step in range(1, 5):
        log.log(step, {"loss": torch.tensor(1.0 / step), "lr": 1e-5 * step, "grad_norm": 0.5,
                       "samples_skipped": 0, "time/step": 0.25})
    log.log(4, {"eval/loss": 0.75, "eval/accuracy": 0.5})
    log.close()
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 4]
    assert recs[2] == {"step": 3, "loss": pytest.approx(1 / 3), "lr": pytest.approx(3e-5), "grad_norm": 0.5,
                       "samples_skipped": 0, "time/step": 0.25}
    assert recs[-1] == {"step": 4, "eval/loss": 0.75, "eval/accuracy": 0.5}
    ev = _events(tmp_path / "tb")
    # log_interval=2: steps 2 and 4 reach TensorBoard; the eval record always does.
    assert [s for s, _ in ev["loss"]] == [2, 4]
    assert ev["loss"][0][1] == pytest.approx(0.5)
    assert ev["eval/accuracy"] == [(4, 0.5)]
    assert "time/step" in ev


def test_nonfinite_written_as_strict_json(tmp_path):
    log = MetricsLogger(LoggingConfig(output_dir=str(tmp_path), tensorboard=False, progress_bar=False))
    log.log(1, {"loss": float("nan"), "grad_norm": float("inf"), "x": -math.inf})
    log.close()
    line = (tmp_path / METRICS_FILE).read_text().strip()
    rec = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert rec == {"step": 1, "loss": "nan", "grad_norm": "inf", "x": "-inf"}


def test_other_ranks_write_nothing(tmp_path):
    out = tmp_path / "run"
    log = MetricsLogger(LoggingConfig(output_dir=str(out)), rank=1, total_steps=3)
    log.log(1, {"loss": 1.0})
    log.rewind(0)
    log.close()
    assert not out.exists()


def test_rewind_drops_steps_after_resume_point(tmp_path):
    cfg = LoggingConfig(output_dir=str(tmp_path), tensorboard=False, progress_bar=False)
    log = MetricsLogger(cfg)
    for step in (1, 2, 3):
        log.log(step, {"loss": float(step)})
    log.close()
    log = MetricsLogger(cfg)
    log.rewind(2)
    log.log(3, {"loss": 30.0})
    log.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_wandb_missing_is_one_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(RuntimeError, match="logging.wandb is true but wandb is not installed"):
        MetricsLogger(LoggingConfig(output_dir=str(tmp_path), wandb=True))


def test_timers_sum_and_reset():
    t = Timers()
    with t("a"):
        time.sleep(0.02)
    with t("a"):
        time.sleep(0.02)
    with t("b"):
        pass
    out = t.pop()
    assert set(out) == {"time/a", "time/b"} and 0.04 <= out["time/a"] < 0.5
    assert t.pop() == {}


def test_nonfinite_guard_counts_consecutive():
    g = NonFiniteGuard(max_consecutive=2)
    assert not g.observe(1.0, 2.0)
    assert g.observe(float("nan"), 1.0) and not g.exhausted
    assert not g.observe(1.0, 1.0) and g.consecutive == 0
    assert g.observe(1.0, torch.tensor(float("inf")))
    assert g.observe(float("inf"), None) and g.exhausted and g.total == 3
    assert "2 optimizer steps in a row" in g.message


def test_nothing_written_before_first_record(tmp_path):
    out = tmp_path / "run"
    log = MetricsLogger(LoggingConfig(output_dir=str(out)), rank=0, total_steps=3)
    log.close()
    assert not out.exists()


def test_wandb_offline_run_is_written_under_output_dir(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = LoggingConfig(output_dir=str(tmp_path), tensorboard=False, progress_bar=False, wandb=True,
                        wandb_project="megatron_vrft_test", wandb_run_name="tiny")
    log = MetricsLogger(cfg, run_config={"lr": 1e-5})
    log.log(1, {"loss": 2.0, "lr": 1e-5})
    log.log(2, {"loss": 1.5, "lr": 1e-5})
    log.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    assert list(runs[0].glob("*.wandb")), "no offline run file"
    assert wandb.run is None  # finished

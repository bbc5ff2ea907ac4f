"""End-to-end GRPO runs through ``examples/run_grpo.py`` on each rollout engine (CPU, fp32, tiny model).

Each run: 2 steps x 2 prompts (step 1: a video prompt and an image prompt, step 2 the same kinds) x
G = 2 completions of <= 8 tokens, rewards format + accuracy + a plugin reward that varies between
completions, kl_beta 0.04 (reference model), a final HF export. Checked: the metrics record of every
step holds every documented key, rewards are computed, the parameters changed (exported weights vs
the initial ones), and the trainer's logprobs of the sampled tokens equal the engine's within 1e-4
(``logprob_gap``, measured before the update) on those image and video prompts. The ViT-call count
checks the reuse: one ViT call per micro-batch and pass, or once per prompt with a frozen ViT.

The same runs at PP=2 (HF engine) and TP=2 (vLLM engine, one engine per rank, the replica leader
samples) on 2 gloo processes give the 1-process runs' rewards and losses.
"""

import math

import pytest
import torch

from megatron_vrft.testing.grpo_run import launch_grpo, write_tiny_grpo
from megatron_vrft.trainer.metrics import read_metrics

REQUIRED = ("step", "loss", "lr", "grad_norm", "reward", "reward_std", "kl", "clip_frac", "entropy", "completion_len",
            "time/rollout", "time/reward", "time/logprob", "time/update", "time/weight_sync", "weight_sync_gb",
            "logprob_gap", "vit_calls")
REWARDS = ("format", "accuracy", "tests.trainer.grpo_rewards:letter_share")


def _weights(directory):
    from safetensors.torch import load_file

    from megatron_vrft.models.qwen2_5_vl.weights import read_hf_key

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update({read_hf_key(k): v for k, v in load_file(str(f)).items()})
    return out


def _check_run(root, out, records):
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        missing = [k for k in REQUIRED + tuple(f"reward/{n}" for n in REWARDS) if k not in r]
        assert not missing, missing
        assert r["logprob_gap"] <= 1e-4, r["logprob_gap"]
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["update_skipped"] == 0
        assert r["reward/format"] == 0.0 and r["reward/accuracy"] == 0.0  # random text: normal value 0, no crash
        assert 0 < r["reward/tests.trainer.grpo_rewards:letter_share"] <= 1
        assert r["reward"] == pytest.approx(r["reward/tests.trainer.grpo_rewards:letter_share"])
        assert r["weight_sync_gb"] > 0 and r["completions"] == 4 and 1 <= r["completion_len"] <= 8
    assert math.isfinite(records[1]["kl"]) and records[1]["kl"] > 0  # the policy moved away from the reference
    before, after = _weights(root / "hf"), _weights(out / "hf")
    assert set(after) <= set(before) and len(after) > 0
    changed = [n for n in after if not torch.equal(after[n], before[n])]
    assert any(n.startswith("model.layers.") for n in changed) and any(n.startswith("lm_head") for n in changed)
    return before, changed


def _gb(weights, prefix=""):
    return sum(t.numel() * t.element_size() for n, t in weights.items() if n.startswith(prefix)) / 1e9


HF_RUN = ["rollout.engine=hf"]
# Frozen ViT and merger, two mini-batches (old-logprob pass, gap measured there): each prompt's ViT
# output is computed once per step and reused by the old, reference and both update passes.
VLLM_RUN = ["rollout.engine=vllm", "model.freeze_vision=true", "model.freeze_projector=true",
            "grpo.updates_per_rollout=2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_e2e")
    return root, write_tiny_grpo(root, engine="hf", checkpoint={"export_hf": True})


def _launch(tiny, name, overrides, nproc=1):
    root, cfg = tiny
    proc = launch_grpo(cfg, overrides, nproc=nproc, out=root / name, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / name


@pytest.fixture(scope="module")
def hf_run(tiny):
    return _launch(tiny, "hf_run", HF_RUN)


@pytest.fixture(scope="module")
def vllm_run(tiny):
    pytest.importorskip("vllm")
    return _launch(tiny, "vllm_run", VLLM_RUN)


def test_grpo_e2e_hf_engine(tiny, hf_run):
    records = read_metrics(hf_run)
    before, changed = _check_run(tiny[0], hf_run, records)
    assert any(n.startswith("visual.") for n in changed)  # the ViT trains too here
    assert all(r["weight_sync_gb"] == pytest.approx(_gb(before)) for r in records)  # everything is trained
    # ViT trained: each forward encodes its micro-batch's distinct media once; one micro-batch holds
    # both prompts' completions -> one call in the reference pass + one in the update pass.
    assert [r["vit_calls"] for r in records] == [2.0, 2.0]


def test_grpo_e2e_vllm_engine(tiny, vllm_run):
    records = read_metrics(vllm_run)
    before, changed = _check_run(tiny[0], vllm_run, records)
    assert not any(n.startswith("visual.") for n in changed)  # frozen
    assert [r["vit_calls"] for r in records] == [2.0, 2.0]  # = prompts per step (TRL-style: G + 1 per prompt)
    # the frozen ViT + merger went to the engine once, at build; each step sends the rest
    sent = _gb(before) - _gb(before, "visual.")
    assert all(r["weight_sync_gb"] == pytest.approx(sent) for r in records)


def _same_run(parallel, single):
    """A TP/PP run on 2 gloo processes gives the 1-process run's completions, rewards and losses."""
    a, b = read_metrics(parallel), read_metrics(single)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        assert ra["logprob_gap"] <= 1e-4
        for key in ("reward", "reward_std", "completion_len", "weight_sync_gb", "vit_calls"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6), key
        for key in ("loss", "grad_norm", "kl", "entropy"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key


def test_grpo_pp2_hf_engine(tiny, hf_run):
    _same_run(_launch(tiny, "pp2_hf", HF_RUN + ["parallel.pp=2", "checkpoint.export_hf=false"], nproc=2), hf_run)


def test_grpo_tp2_vllm_engine(tiny, vllm_run):
    _same_run(_launch(tiny, "tp2_vllm", VLLM_RUN + ["parallel.tp=2", "checkpoint.export_hf=false"], nproc=2), vllm_run)


def test_grpo_resume_hf_engine(tiny, hf_run):
    """1 step + save, then a rerun to 2 steps resumes (model, optimizer, data position, step) and
    re-syncs the engine before sampling: its step 2 is the uninterrupted run's step 2."""
    root = tiny[0]
    save = [f"checkpoint.save_dir={root / 'resume_ck'}", "checkpoint.export_hf=false"]
    _launch(tiny, "resume", HF_RUN + save + ["grpo.max_steps=1"])
    resumed = read_metrics(_launch(tiny, "resume", HF_RUN + save))
    assert [r["step"] for r in resumed] == [1, 2]
    a, b = resumed[1], read_metrics(hf_run)[1]
    for key in ("reward", "reward_std", "completion_len"):
        assert a[key] == b[key], key
    for key in ("loss", "grad_norm", "kl"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key

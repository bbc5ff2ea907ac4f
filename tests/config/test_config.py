"""Config tree: YAML + overrides, validation errors that name file/line/key, every shipped YAML loads."""

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_vrft.config import ConfigError, RunConfig, help_text, load_config

REPO = Path(__file__).resolve().parents[2]

GRPO_YAML = """\
mode: grpo
model:
  hf_path: /models/qwen
data:
  train_path: train.json
  format: rarft_riq
grpo:
  num_generations: 4
  rewards:
    - name: format_v2
    - {name: refuse_iou, weight: 2.0}
"""


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_yaml_and_overrides_typed(tmp_path):
    cfg = load_config(write(tmp_path, GRPO_YAML), ["optimizer.lr=3e-6", "parallel.tp=2", "data.video.fps=1"],
                      world_size=4)
    assert isinstance(cfg, RunConfig)
    assert cfg.mode == "grpo" and cfg.grpo.num_generations == 4
    assert cfg.optimizer.lr == pytest.approx(3e-6) and cfg.parallel.tp == 2
    assert cfg.data.video.fps == 1.0
    assert [(r.name, r.weight) for r in cfg.grpo.rewards] == [("format_v2", 1.0), ("refuse_iou", 2.0)]


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        ("model:\n  hf_path: /x\n  bogus: 1\ndata:\n  train_path: t\n", [], r"cfg.yaml:3: model.bogus: unknown key"),
        ("model:\n  hf_path: /x\ndata:\n  train_path: t\nparallel:\n  tp: two\n", [], r"cfg.yaml.*parallel.tp"),
        ("model:\n  hf_path: [1\n", [], r"cfg.yaml:3: malformed YAML"),
        ("- a\n- b\n", [], r"top level must be a mapping"),
        ("model:\n  hf_path: /x\ndata:\n  train_path: t\n", ["parallel.tp=x"], r"command line: parallel.tp"),
        ("model:\n  hf_path: /x\ndata:\n  train_path: t\n", ["nosuch.key=1"], r"command line: nosuch: unknown key"),
        ("model:\n  hf_path: /x\ndata:\n  train_path: t\n", ["lr"], r"not of the form key=value"),
        ("model:\n  hf_path: /x\ndata:\n  train_path: t\nparallel:\n  tp: 3\n", [], r"cfg.yaml:5: parallel: world size 4 is not divisible"),
        (GRPO_YAML, ["grpo.num_generations=1"], r"cfg.yaml:8: grpo.num_generations: GRPO needs at least 2"),
        (GRPO_YAML, ["mode=ppo"], r"cfg.yaml:1: mode: 'ppo' is not one of"),
        ("data:\n  train_path: t\n", [], r"model: set model.hf_path"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text), overrides, world_size=4)


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config("nope.yaml")


def test_cli_prints_one_error_line_without_traceback(tmp_path):
    path = write(tmp_path, "model:\n  hf_path: /x\n  bogus: 1\n")
    out = subprocess.run([sys.executable, "-m", "megatron_vrft.config", path], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {path}:3: model.bogus: unknown key"]


def test_help_lists_every_field_with_help():
    text = help_text()
    for key in ("parallel.tp", "grpo.kl_beta", "data.video.fps", "checkpoint.pretrained_path"):
        assert f"  {key} (default" in text
    assert all(line.split("): ", 1)[1] for line in text.splitlines())


def test_every_shipped_yaml_loads():
    yamls = sorted((REPO / "examples").rglob("*.yaml"))
    assert yamls, "examples/ ships no YAML configs"
    for path in yamls:
        cfg = load_config(str(path), world_size=None)
        assert cfg.mode in ("sft", "grpo"), path

"""docs/configuration.md is what tools/gen_config_docs.py generates from config.py's help strings."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import gen_config_docs  # noqa: E402


def test_committed_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gen_config_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_field_is_documented_with_its_help():
    text = gen_config_docs.generate()
    from megatron_vrft.config import RunConfig, help_text

    for line in help_text(RunConfig).splitlines():
        key, _, help_ = line.strip().partition(" (default ")
        assert f"| `{key}` |" in text, key
        assert help_.split("): ", 1)[1].replace("|", "\\|") in text, key
    assert "| `grpo.rewards[].name` | str | required |" in text
    assert "| `model.hf_path` | str \\| null | `null` |" in text


def test_check_fails_when_a_help_string_changes(monkeypatch):
    from megatron_vrft import config

    original = gen_config_docs.generate()
    field = next(f for f in dataclasses.fields(config.OptimizerConfig) if f.name == "lr")
    monkeypatch.setattr(field, "metadata", {"help": "a changed help string"})
    changed = gen_config_docs.generate()
    assert changed != original and "a changed help string" in changed

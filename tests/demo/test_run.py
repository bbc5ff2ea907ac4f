"""The demo orchestration end to end, shortened (tests/demo/_small_demo.py: 4 clips per split, 2 SFT and
2 GRPO steps at TP=2 on two gloo processes): every phase runs through the real trainers and the HF
engine, the table has the three stages with the held-out size, the phases hand over through their HF
exports, and a second run in the same directory starts from scratch. The full demo is not run here
(about 10 minutes: docs/benchmarks.md, "CPU demo")."""

import json
import subprocess
import sys
from pathlib import Path

from megatron_vrft.demo.run import TABLE
from megatron_vrft.runtime.distributed import free_port
from megatron_vrft.testing.grpo_run import _env

SCRIPT = Path(__file__).with_name("_small_demo.py")


def _launch(out: Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(SCRIPT), str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**_env(), "OMP_NUM_THREADS": "1"}, cwd=cwd,
                          timeout=240)


def test_small_demo_writes_the_table(tmp_path):
    out = tmp_path / "demo"
    proc = _launch(out, cwd=tmp_path)  # not the repository: config files resolve from the package
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / f"{TABLE}.md").read_text()
    lines = table.splitlines()
    assert lines[0] == "| stage | held-out prompts | accuracy | format rate | mean reward |"
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| base", "| after SFT", "| after GRPO"]
    assert all(line.split(" | ")[1] == "4" for line in lines[2:5])
    assert "after GRPO vs after SFT: accuracy" in table and "2-SE noise margin" in table
    assert table.strip() in proc.stdout
    report = json.loads((out / f"{TABLE}.json").read_text())
    assert list(report["stages"]) == ["base", "after SFT", "after GRPO"] and report["world_size"] == 2
    for stage in report["stages"].values():
        assert stage["n"] == 4 and 0 <= stage["accuracy"] <= 1 and stage["reward"] == stage["accuracy"] + stage["format"]
    for phase, steps in (("sft", 2), ("grpo", 2)):
        records = [json.loads(line) for line in (out / phase / "metrics.jsonl").read_text().splitlines()]
        assert max(r["step"] for r in records if "loss" in r) == steps
        assert (out / phase / "hf" / "config.json").is_file()
    for phase in ("SFT", "GRPO"):
        assert f"] {phase}: " in proc.stderr  # a progress line per phase
    (out / "grpo" / "stale.txt").write_text("from an earlier run")
    again = _launch(out, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (out / "grpo" / "stale.txt").exists()
    assert json.loads((out / f"{TABLE}.json").read_text())["stages"] == report["stages"]  # deterministic

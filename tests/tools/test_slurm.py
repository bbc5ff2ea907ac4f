"""tools/slurm: every template passes `bash -n`, renders with sample values, and — run with Slurm's
and the launchers' commands replaced by logging stubs on PATH — issues exactly the srun/torchrun
lines a cluster would run. The requeue path (USR1 before the time limit -> SIGTERM to the step ->
`scontrol requeue`) is exercised for real on a sleeping stub step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "tools" / "slurm"
sys.path.insert(0, str(SLURM))
from render import RenderError, render  # noqa: E402

TEMPLATES = sorted(SLURM.glob("*.sbatch"))
SAMPLE = {
    "sft.sbatch": {"CONFIG": "examples/configs/rbft_sft_stage1.yaml", "NODES": "2", "GPUS_PER_NODE": "4",
                   "OVERRIDES": "optimizer.lr=1e-5", "RUN_DIR": "outputs/s1"},
    "grpo.sbatch": {"CONFIG": "examples/configs/rbft_grpo.yaml", "NODES": "1", "GPUS_PER_NODE": "8"},
    "judge_server.sbatch": {"JUDGE_MODEL": "/models/judge", "GPUS": "2", "PORT": "8123"},
    "convert.sbatch": {"DIRECTION": "hf_to_mcore", "SRC": "/models/qwen", "DST": "ckpt/q_tp2", "TP": "2", "PP": "2"},
}
STUBS = {
    # srun: log the options, then run the command as node 0 of the job (as srun would on each node).
    "srun": 'opts=(); while [[ "$1" == -* ]]; do opts+=("$1"); shift; done\n'
            'echo "srun ${opts[*]}" >> "$STUB_LOG"\nSLURM_NODEID=0 SLURM_PROCID=0 exec "$@"',
    "torchrun": 'echo "torchrun $*" >> "$STUB_LOG"\nif [ -n "${STUB_SLEEP:-}" ]; then exec sleep "$STUB_SLEEP"; fi',
    "python": 'echo "python $*" >> "$STUB_LOG"',
    "vllm": 'echo "vllm $*" >> "$STUB_LOG"',
    "curl": 'echo "curl $*" >> "$STUB_LOG"',
    "scontrol": 'if [ "$1 $2" = "show hostnames" ]; then printf "node01\\nnode02\\n"; else echo "scontrol $*" >> "$STUB_LOG"; fi',
}


@pytest.fixture
def stub_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "stub.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log), "HOME": str(tmp_path),
           "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[01-02]"}
    return env, log


def _render(tmp_path, name, **extra) -> Path:
    values = {**SAMPLE[name], "LOG_DIR": str(tmp_path / "logs"), **extra}
    out = tmp_path / f"rendered_{name}"
    out.write_text(render(SLURM / name, values))
    return out


def _run(script: Path, env: dict, log: Path) -> list[str]:
    proc = subprocess.run(["/bin/bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines()


def test_every_template_is_covered_and_valid_bash(tmp_path):
    assert {t.name for t in TEMPLATES} == set(SAMPLE)
    for t in TEMPLATES:
        subprocess.run(["bash", "-n", str(t)], check=True)
        rendered = _render(tmp_path, t.name)
        subprocess.run(["bash", "-n", str(rendered)], check=True)
        text = rendered.read_text()
        body = [line for line in text.splitlines() if not line.startswith("#   {{")]
        assert not any("{{" in line for line in body), t.name
        assert "#SBATCH --account" not in text  # empty value: line dropped, Slurm's default applies
        assert f"#SBATCH --output={tmp_path}/logs/%x-%j.out" in text
    assert (tmp_path / "logs").is_dir()


def test_render_errors_name_the_variable():
    with pytest.raises(RenderError, match=r"required variable\(s\) \['CONFIG'\]"):
        render(SLURM / "sft.sbatch", {}, make_dirs=False)
    with pytest.raises(RenderError, match=r"unknown variable\(s\) \['NODE'\]"):
        render(SLURM / "sft.sbatch", {"CONFIG": "c.yaml", "NODE": "2"}, make_dirs=False)


def test_sft_multinode_torchrun_line(tmp_path, stub_env):
    env, log = stub_env
    script = _render(tmp_path, "sft.sbatch")
    text = script.read_text()
    for line in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--requeue", "--signal=B:USR1@600"):
        assert f"#SBATCH {line}\n" in text
    lines = _run(script, env, log)
    assert lines[0] == f"srun --kill-on-bad-exit=1 --output={tmp_path}/logs/%x-%j-node%n.out --open-mode=append"
    assert lines[1] == (
        "torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=node01:29742 "
        "--rdzv-id=4242 --max-restarts=0 examples/run_sft.py --config examples/configs/rbft_sft_stage1.yaml "
        "logging.output_dir=outputs/s1 checkpoint.save_dir=outputs/s1/checkpoints checkpoint.resume=true "
        "optimizer.lr=1e-5")


def test_grpo_single_node_waits_for_the_judge_url(tmp_path, stub_env):
    env, log = stub_env
    url_file = tmp_path / "judge_url"
    url_file.write_text("http://gpu07:8123/v1\n")
    script = _render(tmp_path, "grpo.sbatch", JUDGE_URL_FILE=str(url_file))
    env = {**env, "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node01"}
    (tmp_path / "bin" / "torchrun").write_text('#!/bin/bash\necho "torchrun $* judge=$JUDGE_BASE_URL" >> "$STUB_LOG"\n')
    lines = _run(script, env, log)
    assert lines[1] == (
        "torchrun --nnodes=1 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=node01:29742 "
        "--rdzv-id=4242 --max-restarts=0 examples/run_grpo.py --config examples/configs/rbft_grpo.yaml "
        "logging.output_dir=outputs/grpo checkpoint.save_dir=outputs/grpo/checkpoints checkpoint.resume=true "
        "judge=http://gpu07:8123/v1")


def test_judge_server_serves_and_writes_its_url(tmp_path, stub_env):
    env, log = stub_env
    url_file = tmp_path / "out" / "judge_url"
    script = _render(tmp_path, "judge_server.sbatch", URL_FILE=str(url_file))
    lines = _run(script, {**env, "JUDGE_API_KEY": "sekret"}, log)
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert "vllm serve /models/judge --host 0.0.0.0 --port 8123 --served-model-name judge " \
           "--tensor-parallel-size 2 --max-model-len 16384 --api-key sekret" in lines
    assert f"curl -sf -H Authorization: Bearer sekret http://{host}:8123/v1/models" in lines
    # the URL file is removed when the server stops (the stub exits at once), so it cannot go stale
    assert not url_file.exists()


def test_convert_runs_the_converter_then_verify(tmp_path, stub_env):
    env, log = stub_env
    lines = _run(_render(tmp_path, "convert.sbatch"), env, log)
    assert lines == [
        "srun ",
        "python checkpoint_convert/hf_to_mcore.py --hf-dir /models/qwen --out-dir ckpt/q_tp2 --tp 2 --pp 2 --no-progress",
        "srun ",
        "torchrun --standalone --nproc-per-node=4 checkpoint_convert/verify.py --hf-dir /models/qwen "
        "--mcore-dir ckpt/q_tp2 --tp 2 --pp 2",
    ]
    log.unlink()
    lines = _run(_render(tmp_path, "convert.sbatch", DIRECTION="mcore_to_hf", SRC="ckpt/q_tp2", DST="hf_out",
                         HF_CONFIG="/models/qwen"), env, log)
    assert lines == ["srun ", "python checkpoint_convert/mcore_to_hf.py --mcore-dir ckpt/q_tp2 --out-dir hf_out "
                              "--hf-config /models/qwen --no-progress"]


def _wait_for_step(proc, log: Path) -> None:
    """Until the stub step runs (the batch shell has its USR1 trap by then)."""
    deadline = time.time() + 30
    while not (log.exists() and "torchrun" in log.read_text()):
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"the step never started: {proc.communicate()}")
        time.sleep(0.1)
    time.sleep(0.3)


def test_time_limit_warning_stops_the_step_and_requeues(tmp_path, stub_env):
    env, log = stub_env
    script = _render(tmp_path, "sft.sbatch", GRACE_S="5", MAX_RESTARTS="3")
    proc = subprocess.Popen(["/bin/bash", str(script)], env={**env, "STUB_SLEEP": "60", "SLURM_RESTART_COUNT": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, log)
    start = time.time()
    os.kill(proc.pid, signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.time() - start < 5  # the step honoured SIGTERM: no wait for the grace period
    assert "scontrol requeue 4242" in log.read_text().splitlines()
    assert "requeueing job 4242" in out
    # at the restart limit the job ends without requeueing
    log.unlink()
    proc = subprocess.Popen(["/bin/bash", str(script)], env={**env, "STUB_SLEEP": "60", "SLURM_RESTART_COUNT": "3"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, log)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    assert "not requeued (MAX_RESTARTS=3 reached)" in out and "scontrol" not in log.read_text()

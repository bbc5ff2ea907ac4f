"""keep_last rotation touches only directories this trainer wrote (failure agreement: tests/runtime/test_collective.py)."""

import json
import os

from megatron_vrft.checkpoint.atomic import OWNER, atomic_dir
from megatron_vrft.trainer.checkpoint import FORMAT, STATE_FILE, latest_checkpoint, list_checkpoints, rotate_checkpoints


def _ours(root, step, complete=True, fmt=FORMAT):
    d = root / f"step_{step}"
    d.mkdir()
    (d / STATE_FILE).write_text(json.dumps({"format": fmt, "version": 1, "step": step}))
    if complete:
        (d / "COMPLETE").write_text("ok\n")
    return d


def test_rotation_keeps_newest_and_never_deletes_foreign_dirs(tmp_path):
    for s in (2, 4, 10, 6):
        _ours(tmp_path, s)
    _ours(tmp_path, 12, complete=False)  # not complete: never resumed from, not counted
    (tmp_path / "step_1").mkdir()  # someone else's step_1 (no trainer_state.json)
    (tmp_path / "step_1" / "weights.bin").write_text("x")
    _ours(tmp_path, 3, fmt="other/format")
    (tmp_path / "notes").mkdir()
    dead = tmp_path / "step_8.tmp-999999999"  # a crashed save of a process that is gone
    dead.mkdir()
    live = tmp_path / f"step_9.tmp-{os.getpid()}"  # a save in progress (this process is alive)
    live.mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 6, 10]
    deleted = rotate_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in deleted) == ["step_2", "step_4", "step_8.tmp-999999999"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes", "step_1", "step_10", "step_12", "step_3", "step_6", f"step_9.tmp-{os.getpid()}"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_10"
    assert rotate_checkpoints(tmp_path, keep_last=0) == []  # 0 keeps all


def test_rotation_recognises_what_atomic_dir_writes(tmp_path):
    """save_checkpoint writes through atomic_dir: its owner file and marker make the step dir ours."""
    for s in (1, 2):
        with atomic_dir(tmp_path / f"step_{s}", overwrite=True) as tmp:
            (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, "version": 1, "step": s}))
    assert (tmp_path / "step_1" / OWNER).is_file()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2]
    assert rotate_checkpoints(tmp_path, keep_last=1) == [tmp_path / "step_1"]

"""``atomic_dir``: ``overwrite`` replaces only an empty directory or one this project wrote; a user's
directory (e.g. ``--out-dir ~/models --overwrite``) is refused, named, and left untouched."""

import pytest

from megatron_vrft.checkpoint.atomic import COMPLETE, OWNER, CheckpointError, atomic_dir, is_ours


def _write(out, name="model.safetensors", **kw):
    with atomic_dir(out, **kw) as tmp:
        (tmp / name).write_text("new\n")


def test_overwrite_refuses_a_directory_we_did_not_write(tmp_path):
    models = tmp_path / "models"
    (models / "Qwen2.5-VL-7B").mkdir(parents=True)
    (models / "Qwen2.5-VL-7B" / "model.safetensors").write_text("user weights\n")
    (models / "notes.txt").write_text("mine\n")
    with pytest.raises(CheckpointError, match=f"{models} already exists, is not empty and was not written by"):
        _write(models, overwrite=True)
    assert (models / "notes.txt").read_text() == "mine\n"
    assert (models / "Qwen2.5-VL-7B" / "model.safetensors").read_text() == "user weights\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no temp dir left behind
    assert not is_ours(models)


@pytest.mark.parametrize("marker", [True, False])  # mcore checkpoints / HF exports (no COMPLETE)
def test_overwrite_replaces_our_own_output(tmp_path, marker):
    out = tmp_path / "out"
    _write(out, name="old.bin", marker=marker)
    assert is_ours(out) and (out / OWNER).is_file() and (out / COMPLETE).is_file() == marker
    with pytest.raises(CheckpointError, match="already exists and is .*; pass --overwrite"):
        _write(out, marker=marker)
    _write(out, overwrite=True, marker=marker)
    assert sorted(p.name for p in out.iterdir()) == sorted([OWNER, "model.safetensors"] + [COMPLETE] * marker)


def test_overwrite_of_an_empty_dir_and_of_a_pre_owner_checkpoint(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _write(empty)
    assert (empty / "model.safetensors").is_file()
    legacy = tmp_path / "legacy"  # written before the OWNER file existed: COMPLETE marks it
    legacy.mkdir()
    (legacy / COMPLETE).write_text("ok\n")
    (legacy / "metadata.json").write_text("{}\n")
    assert is_ours(legacy)
    _write(legacy, overwrite=True)
    assert not (legacy / "metadata.json").exists()

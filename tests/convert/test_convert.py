"""Offline converters: bit-exact HF -> mcore -> HF round trips through files, cross-layout
resharding from disk, HF ``from_pretrained`` of the output, atomic output and clear errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from megatron_vrft.checkpoint.atomic import COMPLETE, CheckpointError
from megatron_vrft.checkpoint.convert import convert_hf_to_mcore, convert_mcore_to_hf
from megatron_vrft.checkpoint.mcore_io import McoreCheckpoint, rank_dir
from megatron_vrft.checkpoint.stream import SafetensorsFile, TensorSpec, write_safetensors
from megatron_vrft.models.qwen2_5_vl import weights as W
from megatron_vrft.testing.tiny_qwen import TINY_SHAPES, save_tiny_hf

REPO = Path(__file__).resolve().parents[2]


def _read_dir(path):
    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Tiny HF checkpoints: untied GQA (fp32) and tied MQA stored in bf16 like the releases."""
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for name, overrides in TINY_SHAPES.items():
        d = root / name
        model = save_tiny_hf(d, seed=0, **overrides)
        if overrides.get("tie_word_embeddings"):
            sd = {k: v.to(torch.bfloat16) for k, v in load_file(d / "model.safetensors").items()}
            save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
        dirs[name] = d
        del model
    return dirs


def test_streaming_writer_is_readable_by_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.tensor([True, False]), "d": torch.randn(0, 4)}
    plan = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    write_safetensors(tmp_path / "x.safetensors", plan, iter(tensors.items()))
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())
    save_file(tensors, tmp_path / "lib.safetensors")  # and the library's files read with ours
    ours = SafetensorsFile(tmp_path / "lib.safetensors")
    assert all(torch.equal(ours.get(k), v) for k, v in tensors.items())
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "lib.safetensors").read_bytes()[:-3])
    with pytest.raises(CheckpointError, match=r"cut.safetensors.*truncated"):
        SafetensorsFile(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match=r"expected tensor b .* got a"):
        write_safetensors(tmp_path / "y.safetensors", plan[1:], iter(tensors.items()))


@pytest.mark.parametrize("name", sorted(TINY_SHAPES))
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2), (2, 1)])
def test_hf_mcore_hf_files_bit_exact(hf_dirs, tmp_path, name, tp, pp):
    src = hf_dirs[name]
    mc = convert_hf_to_mcore(src, tmp_path / "mc", tp=tp, pp=pp, progress=False)
    assert (mc / COMPLETE).is_file() and not list(tmp_path.glob("*.tmp-*"))
    meta = json.loads((mc / "metadata.json").read_text())
    assert (meta["tp"], meta["pp"], meta["hf_config"]["model_type"]) == (tp, pp, "qwen2_5_vl")
    ck = McoreCheckpoint(mc)
    cfg = ck.config
    for t in range(tp):
        for p in range(pp):
            with safe_open(str(mc / rank_dir(t, p) / "model.safetensors"), "pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            assert shapes == W.mcore_shapes(cfg, tp_rank=t, tp_size=tp, pp_rank=p, pp_size=pp)
    out = convert_mcore_to_hf(mc, tmp_path / "hf2", hf_config_dir=src, max_shard_bytes=200_000, progress=False)
    orig, back = _read_dir(src), _read_dir(out)
    assert back.keys() == orig.keys()
    for k in orig:
        assert back[k].dtype == orig[k].dtype and torch.equal(back[k], orig[k]), k
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    assert (out / "generation_config.json").is_file()


def test_output_loads_in_transformers_and_reshards_from_disk(hf_dirs, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    src = hf_dirs["untied_gqa"]
    mc = convert_hf_to_mcore(src, tmp_path / "mc22", tp=2, pp=2, progress=False)
    out = convert_mcore_to_hf(mc, tmp_path / "hf2", progress=False)  # config from the checkpoint
    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(src).state_dict()
    got = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    # the loader's resharding path: saved TP2/PP2 read as HF, re-split for TP1/PP1 == direct TP1/PP1 file
    direct = convert_hf_to_mcore(src, tmp_path / "mc11", tp=1, pp=1, progress=False)
    ck = McoreCheckpoint(mc)
    resharded = dict(W.hf_to_mcore(ck.hf_view(), ck.config, tp_rank=0, tp_size=1, pp_rank=0, pp_size=1))
    want = load_file(direct / rank_dir(0, 0) / "model.safetensors")
    assert resharded.keys() == want.keys() and all(torch.equal(resharded[k], want[k]) for k in want)


def _no_output(tmp_path, out):
    return not out.exists() and not list(tmp_path.glob("*.tmp-*"))


def test_bad_inputs_raise_one_clear_error_and_write_nothing(hf_dirs, tmp_path):
    src = hf_dirs["untied_gqa"]
    out = tmp_path / "out"
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(W.UnsupportedConfigError, match=r"HF config at .*llama/config.json is model_type=llama, "
                                                       r"expected qwen2_5_vl"):
        convert_hf_to_mcore(llama, out, progress=False)
    sharded = convert_mcore_to_hf(convert_hf_to_mcore(src, tmp_path / "mc", progress=False), tmp_path / "sharded",
                                  hf_config_dir=src, max_shard_bytes=300_000, progress=False)
    (sharded / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing shard model-00002-of-00003.safetensors listed in"):
        convert_hf_to_mcore(sharded, out, progress=False)
    with pytest.raises(W.ParallelSizeError, match=r"tensor-parallel size 3 does not divide "
                                                  r"text_config.num_attention_heads=4"):
        convert_hf_to_mcore(src, out, tp=3, progress=False)
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    sd = load_file(bad / "model.safetensors")
    sd["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(W.WeightShapeError, match=r"model.layers.1.self_attn.k_proj.weight in .*model.safetensors "
                                                 r"has shape \[16, 64\], expected \[32, 64\]"):
        convert_hf_to_mcore(bad, out, progress=False)
    assert _no_output(tmp_path, out)


def test_existing_or_incomplete_outputs(hf_dirs, tmp_path):
    src = hf_dirs["tied_mqa"]
    mc = convert_hf_to_mcore(src, tmp_path / "mc", progress=False)
    with pytest.raises(CheckpointError, match="already exists and is a complete checkpoint; pass --overwrite"):
        convert_hf_to_mcore(src, mc, tp=2, progress=False)
    assert McoreCheckpoint(mc).tp == 1
    convert_hf_to_mcore(src, mc, tp=2, overwrite=True, progress=False)
    assert McoreCheckpoint(mc).tp == 2 and not list(tmp_path.glob("mc.*"))
    (mc / COMPLETE).unlink()
    with pytest.raises(CheckpointError, match="incomplete .no COMPLETE marker"):
        McoreCheckpoint(mc)
    (mc / COMPLETE).write_text("ok\n")
    with pytest.raises(CheckpointError, match=r"does not match the checkpoint's config: "
                                              r"text_config.num_hidden_layers is 3 there, 2 in the checkpoint"):
        convert_mcore_to_hf(mc, tmp_path / "x", hf_config_dir=hf_dirs["untied_gqa"], progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_help_and_error_line(hf_dirs, tmp_path):
    for script in ("hf_to_mcore.py", "mcore_to_hf.py"):
        r = subprocess.run([sys.executable, str(REPO / "checkpoint_convert" / script), "--help"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "--out-dir" in r.stdout
    r = subprocess.run([sys.executable, str(REPO / "checkpoint_convert" / "hf_to_mcore.py"), "--hf-dir",
                        str(hf_dirs["untied_gqa"]), "--out-dir", str(tmp_path / "o"), "--tp", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "error: tensor-parallel size 3 does not divide text_config.num_attention_heads=4")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["../elsewhere/model.safetensors", "ABS"])
def test_index_shard_names_must_stay_inside_the_checkpoint(hf_dirs, tmp_path, where):
    """A crafted index pointing a tensor at a file outside the checkpoint is refused, even when that
    file exists and holds valid tensors."""
    src = hf_dirs["tied_mqa"]
    ck, outside = tmp_path / "ck", tmp_path / "elsewhere"
    shutil.copytree(src, ck)
    outside.mkdir()
    shutil.move(ck / "model.safetensors", outside / "model.safetensors")
    fname = str(outside / "model.safetensors") if where == "ABS" else where
    with safe_open(outside / "model.safetensors", "pt") as f:
        weight_map = {k: fname for k in f.keys()}
    (ck / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: tensor .* names shard .*"
                                              r"which is not a file inside"):
        convert_hf_to_mcore(ck, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

"""tools/eval/evaluate.py end to end: real checkpoints, the real data path, the rollout engines.

- An HF directory on four synthetic seed formats (binary labels, multiple choice, temporal
  grounding, RA-RFT refusal), HF engine, greedy: report.json / samples.jsonl have the documented
  keys and the report's metrics equal a recomputation by hand from samples.jsonl and the data file.
  The model is a tiny Qwen2.5-VL made to answer "B" to every prompt (see `answer_b_model`), so the
  multiple-choice accuracy is a known non-zero number (the gold letters are A, B, C, A -> 1/4).
- A trainer checkpoint (``checkpoint.save_dir`` of a 1-step tiny SFT run) evaluates to exactly the
  completions of the same run's HF export (``checkpoint.export_hf``).
- The vLLM engine gives the HF engine's samples (skipped when vllm is not importable).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_vrft.testing.sft_run import _env, write_tiny_sft

REPO = Path(__file__).resolve().parents[2]
# by file path: "evaluate" is also the name of a PyPI package
_spec = importlib.util.spec_from_file_location("vrft_tools_evaluate", REPO / "tools/eval/evaluate.py")
evaluate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate)

VIDEO = '{"nframes": 4, "min_pixels": 3136, "max_pixels": 3136}'
REPORT_KEYS = {"checkpoint", "data", "format", "engine", "temperature", "max_new_tokens", "skipped", "seconds",
               "metrics"}
SAMPLE_KEYS = {"id", "completion", "parsed", "score", "finish_reason"}
# format -> (annotation file under the synthetic root, the metric it calls for)
SETS = {"open_r1_video": ("open_r1_video/grpo.jsonl", "binary"),
        "robo2vlm_mcq": ("robo2vlm_mcq/grpo.parquet", "choice"),
        "time_r1_tg": ("time_r1_tg/train.json", "grounding"),
        "rarft_riq": ("rarft_riq/anno.json", "refusal")}


@torch.no_grad()
def answer_b_model(directory: Path) -> None:
    """A rollout-shape tiny Qwen2.5-VL whose greedy answer to any chat prompt is "B" then EOS.

    Attention and MLP outputs are zeroed, so the last hidden state is the final norm of the current
    token's embedding. The embeddings of "\\n" (the end of every prompt: ``assistant\\n``) and "B"
    get disjoint supports, hence orthogonal hidden states h, and the lm_head rows of "B" and EOS are
    ``1000 h / |h|^2`` of "\\n" and "B": logit 1000 for the wanted token, 0 for the other, the random
    rows stay far below."""
    from megatron_vrft.data.testing import build_tiny_tokenizer
    from megatron_vrft.testing.tiny_qwen import ROLLOUT_SHAPES, save_rollout_dir, tiny_hf_model

    model = tiny_hf_model(seed=0, **ROLLOUT_SHAPES["vllm"])
    tok = build_tiny_tokenizer()
    (newline,), (b,) = tok.encode("\n"), tok.encode("B")
    lm = model.model.language_model
    for layer in lm.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    emb = model.get_input_embeddings().weight
    half = emb.shape[1] // 2
    emb[newline] = 0
    emb[newline, :half] = 1
    emb[b] = 0
    emb[b, half:] = 1
    for src, dst in ((newline, b), (b, tok.eos_token_id)):
        h = lm.norm(emb[src][None])[0]
        model.lm_head.weight[dst] = 1000 * h / h.dot(h)
    save_rollout_dir(directory, model)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from megatron_vrft.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("eval_e2e")
    make_synthetic(root / "data", tuple(SETS), 4)
    answer_b_model(root / "model_b")
    return root


def _evaluate(checkpoint, data_root, fmt, out, *extra):
    path, _ = SETS[fmt]
    args = ["--checkpoint", str(checkpoint), "--data", str(data_root / path), "--format", fmt,
            "--media-root", str(data_root / "videos"), "--video", VIDEO, "--out", str(out), "--dtype", "fp32",
            "--max-new-tokens", "6", "--num-workers", "0", *extra]
    return args


def _read(out: Path):
    report = json.loads((out / "report.json").read_text())
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return report, rows


def _by_hand(metric: str, rows: list[dict]) -> dict:
    """The report's numbers from samples.jsonl alone (tools/eval/metrics.py's definitions)."""
    n = len(rows)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    if metric in ("binary", "choice"):
        return {"metric": metric, "n": n, "accuracy": mean([r["score"] for r in rows])}
    if metric == "grounding":
        ious = [r["score"] for r in rows]
        return {"metric": metric, "n": n, "mIoU": mean(ious),
                **{f"R@{t}": mean([float(v >= t) for v in ious]) for t in (0.3, 0.5, 0.7)}}
    ans = [r for r in rows if r["task_type"] == "answerable"]
    ref = [r for r in rows if r["task_type"] == "refusable"]
    ious = [r["iou"] for r in ans]
    return {"metric": metric, "n": n, "refusal_accuracy": mean([r["score"] for r in rows]), "answerable": len(ans),
            "refusable": len(ref), "answered_rate": mean([r["score"] for r in ans]),
            "refused_rate": mean([r["score"] for r in ref]), "answerable_mIoU": mean(ious),
            **{f"answerable_R@{t}": mean([float(v >= t) for v in ious]) for t in (0.3, 0.5, 0.7)}}


@pytest.mark.parametrize("fmt", list(SETS))
def test_hf_directory_each_format(assets, tmp_path, fmt):
    data = assets / "data"
    assert evaluate.main(_evaluate(assets / "model_b", data, fmt, tmp_path, "--engine", "hf")) == 0
    report, rows = _read(tmp_path)
    metric = SETS[fmt][1]
    assert set(report) == REPORT_KEYS and report["engine"] == "hf" and report["temperature"] == 0.0
    assert report["metrics"] == pytest.approx(_by_hand(metric, rows))
    expected_rows = 8 if fmt == "rarft_riq" else 4  # RA-RFT: an answerable and a refusable query per video
    assert len(rows) == report["metrics"]["n"] == expected_rows
    for r in rows:
        assert SAMPLE_KEYS <= set(r), r
        assert (r["completion"], r["finish_reason"]) == ("B", "stop")
    if metric == "choice":  # gold letters A, B, C, A (make_synthetic: index % 3)
        assert [r["parsed"] for r in rows] == ["B"] * 4 and [r["score"] for r in rows] == [0.0, 1.0, 0.0, 0.0]
        assert report["metrics"]["accuracy"] == 0.25
    else:  # "B" states no label / span / refusal: it scores 0 and counts in the denominator
        assert all(r["score"] == 0.0 for r in rows)
    if metric == "refusal":
        assert report["metrics"]["answerable"] == report["metrics"]["refusable"] == 4


def test_trainer_checkpoint_equals_its_hf_export(tmp_path):
    """1-step SFT with checkpoint.save_dir and export_hf; evaluate both in a fresh process (the
    trainer-checkpoint path initialises torch.distributed) and compare the per-sample files."""
    cfg = write_tiny_sft(tmp_path, num=4, sft={"epochs": 1},
                         checkpoint={"save_dir": str(tmp_path / "ckpt"), "export_hf": True})
    script = f"""
import sys
import importlib.util
spec = importlib.util.spec_from_file_location("vrft_tools_evaluate", {str(REPO / 'tools/eval/evaluate.py')!r})
evaluate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(evaluate)
from megatron_vrft.testing.sft_run import launch_sft
from pathlib import Path
p = launch_sft(Path({str(cfg)!r}))
assert p.returncode == 0, p.stderr[-3000:]
data = Path({str(tmp_path / 'data')!r})
common = ["--data", str(data / "llava_conv/grpo.json"), "--format", "llava_conv", "--media-root",
          str(data / "videos"), "--video", {VIDEO!r}, "--dtype", "fp32", "--max-new-tokens", "6",
          "--num-workers", "0", "--engine", "hf"]
assert evaluate.main(["--checkpoint", {str(tmp_path / 'out/hf')!r}, "--out", {str(tmp_path / 'ev_hf')!r}] + common) == 0
assert evaluate.main(["--checkpoint", {str(tmp_path / 'ckpt')!r}, "--hf-config", {str(tmp_path / 'hf')!r},
                      "--out", {str(tmp_path / 'ev_ckpt')!r}] + common) == 0
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=_env(),
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report_hf, rows_hf), (report_ck, rows_ck) = _read(tmp_path / "ev_hf"), _read(tmp_path / "ev_ckpt")
    assert (tmp_path / "ckpt/step_1/trainer_state.json").is_file()
    assert rows_ck == rows_hf and report_ck["metrics"] == report_hf["metrics"] == _by_hand("binary", rows_hf)
    assert len(rows_hf) == 4 and all(len(r["completion"]) > 0 for r in rows_hf)


def test_bad_checkpoint_arguments(assets, tmp_path):
    args = _evaluate(tmp_path / "nowhere", assets / "data", "open_r1_video", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        evaluate.main(args)
    (tmp_path / "mcore").mkdir()
    with pytest.raises(ValueError, match="--hf-config"):
        evaluate.main(_evaluate(tmp_path / "mcore", assets / "data", "open_r1_video", tmp_path / "o"))


def test_vllm_engine_gives_the_hf_samples(assets, tmp_path):
    pytest.importorskip("vllm")
    data = assets / "data"
    for engine in ("hf", "vllm"):
        assert evaluate.main(_evaluate(assets / "model_b", data, "robo2vlm_mcq", tmp_path / engine, "--engine", engine,
                                       "--max-model-len", "1024")) == 0
    (report_hf, rows_hf), (report_v, rows_v) = _read(tmp_path / "hf"), _read(tmp_path / "vllm")
    assert report_v["engine"] == "vllm" and rows_v == rows_hf and report_v["metrics"] == report_hf["metrics"]

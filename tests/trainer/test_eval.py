"""Eval: candidate answers for classification samples, and ``sft.eval_only`` through run_sft.py on
synthetic Robo2VLM multiple-choice data, checked against transformers: the eval loss is HF's
token-mean loss over the same sequences, and the accuracy is the share of samples whose gold
choice has HF's highest reply log-likelihood (fp32). One process (TP=2 and PP=2 give the same
eval.json; checked by hand, see the report of issue 13)."""

import json
import subprocess
import sys

import pytest
import torch

from megatron_vrft.trainer.eval import candidates
from tests.trainer._sft_runs import ROOT, _env, make_assets, run_sft, write_config


def test_candidates_follow_the_gold_answers_writing():
    choices = ["a cup", "a phone", "a key"]
    assert candidates("B. a phone", {"choices": choices}) == (["A. a cup", "B. a phone", "C. a key"], 1)
    assert candidates("<think>x</think> <answer>C</answer>", {"choices": choices}) == (
        ["<think>x</think> <answer>A</answer>", "<think>x</think> <answer>B</answer>",
         "<think>x</think> <answer>C</answer>"], 2)
    assert candidates("<answer> a cup </answer>", {"choices": choices})[1] == 0
    assert candidates("<think>looks odd</think>\n<answer>abnormal</answer>", {"solution": "abnormal"}) == (
        ["<think>looks odd</think>\n<answer>normal</answer>", "<think>looks odd</think>\n<answer>abnormal</answer>"], 1)
    assert candidates("a free-form caption", {}) is None
    assert candidates("D. a hat", {"choices": choices}) is None  # gold is no candidate: not scored


def _hf_reference(assets, data, media):
    """(token-mean loss over the gold replies, accuracy) of the HF model on the eval samples."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from megatron_vrft.data import load_samples
    from megatron_vrft.data.packing import encode_sample
    from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig
    from megatron_vrft.trainer.eval import _with_reply

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(assets["hf"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(assets["hf"])
    rope = RopeIndexConfig.from_hf_config(hf.config)
    samples, _ = load_samples(str(data), "robo2vlm_mcq", str(media), mode="sft",
                              image_options={"min_pixels": 3136, "max_pixels": 12544})

    def nll(item):
        mm = torch.zeros_like(item.input_ids)
        mm[item.input_ids == hf.config.image_token_id] = 1
        with torch.no_grad():
            logits = hf(input_ids=item.input_ids[None], mm_token_type_ids=mm[None], pixel_values=item.pixel_values,
                        image_grid_thw=item.image_grid_thw).logits[0]
        per_tok = torch.nn.functional.cross_entropy(logits[:-1].double(), item.input_ids[1:], reduction="none")
        mask = item.target_mask[1:]
        return float((per_tok * mask).sum()), int(mask.sum())

    loss_sum = count = correct = 0
    for s in samples:
        decoded = s.with_visuals()
        total, n = nll(encode_sample(decoded, tok, rope))
        loss_sum, count = loss_sum + total, count + n
        replies, gold = candidates(s.target, s.columns)
        scores = [nll(encode_sample(_with_reply(decoded, r), tok, rope))[0] for r in replies]
        correct += int(all(scores[gold] < x for i, x in enumerate(scores) if i != gold))
    return loss_sum / count, correct / len(samples), len(samples)


@pytest.mark.timeout(300)
def test_eval_only_matches_hf(tmp_path):
    assets = make_assets(tmp_path / "assets")
    subprocess.run([sys.executable, "tools/make_synthetic.py", "--out", str(tmp_path / "mcq"), "--formats",
                    "robo2vlm_mcq", "--num", "8"], cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=120)
    data, media = tmp_path / "mcq" / "robo2vlm_mcq" / "sft.parquet", tmp_path / "mcq" / "videos"
    cfg = write_config(tmp_path / "eval.yaml", assets, tmp_path,
                       data={"train_path": str(data), "eval_path": str(data), "format": "robo2vlm_mcq",
                             "media_root": str(media),
                             "video": {"fps": 2.0, "min_pixels": 3136, "max_pixels": 12544,
                                       "image_min_pixels": 3136, "image_max_pixels": 12544}},
                       sft={"eval_only": True}, checkpoint={"save_dir": None})
    run_sft(cfg)
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert result["step"] == 0 and result["eval/samples"] == 8 and result["eval/accuracy_samples"] == 8
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert records == [result]
    loss, accuracy, n = _hf_reference(assets, data, media)
    print(f"eval loss mcore {result['eval/loss']:.6f} vs HF {loss:.6f}; accuracy {result['eval/accuracy']} vs {accuracy}")
    assert abs(result["eval/loss"] - loss) <= 1e-5
    assert result["eval/accuracy"] == accuracy

"""Evaluation on ``data.eval_path``: the SFT loss, and for classification data the accuracy of the
answer the model finds most likely.

    metrics = evaluate(run)     # collective; {"eval/loss": .., "eval/accuracy": .., ...}; writes eval.json

- ``eval/loss``: token-mean cross-entropy over all target tokens of the eval set (the eval stream,
  every DP rank its share), forward only, one global ratio ``Σ loss / Σ tokens``.
- ``eval/accuracy`` (only when the eval set has classification samples): for each such sample every
  valid answer is put in the place of the gold answer in the reference reply (the rest of the reply
  kept, e.g. RB-FT's ``<think>`` part), each candidate conversation is scored by its teacher-forced
  log-likelihood of the whole reply (the same model call as training, exact, no sampling), and the
  sample counts as correct when the gold answer scores highest (ties count as wrong). Candidates:
  multiple choice (``choices`` column, Robo2VLM / Video-R2 MCQ): every choice written the way the gold
  answer is written (``B``, ``B. text`` or ``text``); binary labels (``solution`` column, RB-FT):
  ``EVAL_LABELS`` (the ``accuracy`` reward's default label set). The answer is the content of the
  reply's last ``<answer>`` block, or the whole reply.
Results go to the caller's metrics record and to ``<logging.output_dir>/eval.json`` (latest eval).
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from megatron_vrft.rewards.labels import DEFAULT_LABELS

__all__ = ["evaluate", "candidates", "EVAL_FILE", "EVAL_LABELS"]

EVAL_FILE = "eval.json"
EVAL_LABELS = DEFAULT_LABELS
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_LETTER_TEXT = re.compile(r"\(?([A-Z])\)?([.):]\s*)(.+)", re.DOTALL)


def _answer_span(reply: str) -> tuple[int, int]:
    """Character span of the answer inside ``reply``: the last ``<answer>`` block's content, else all."""
    found = list(_ANSWER.finditer(reply))
    return (found[-1].start(1), found[-1].end(1)) if found else (0, len(reply))


def candidates(reply: str, columns: dict) -> Optional[tuple[list[str], int]]:
    """``(candidate replies, index of the reference reply)`` for a classification sample, else None
    (not classification, or a gold answer that matches no candidate)."""
    start, end = _answer_span(reply)
    gold = reply[start:end]
    lead, core, trail = gold[: len(gold) - len(gold.lstrip())], gold.strip(), gold[len(gold.rstrip()):]
    choices = columns.get("choices")
    if isinstance(choices, (list, tuple)) and choices:
        m = _LETTER_TEXT.fullmatch(core)
        if len(core) == 1 and core.isalpha():
            options = [chr(65 + i) for i in range(len(choices))]
        elif m:
            options = [f"{chr(65 + i)}{m.group(2)}{c}" for i, c in enumerate(choices)]
        else:
            options = [str(c) for c in choices]
    elif columns.get("solution") is not None:
        options = list(EVAL_LABELS)
    else:
        return None
    norm = [o.strip().lower() for o in options]
    if core.lower() not in norm:
        return None
    return ([reply[:start] + lead + o + trail + reply[end:] for o in options], norm.index(core.lower()))


def _with_reply(sample: Any, reply: str) -> Any:
    """The sample with its last assistant message (the reference reply) replaced by ``reply``."""
    messages = [dict(m) for m in sample.messages]
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    messages[last]["content"] = reply
    return dataclasses.replace(sample, messages=messages, target=reply)


def _candidate_batch(dataset: Any, index: int, pad_id: int, pixel_dtype: torch.dtype) -> Optional[tuple]:
    """Leader side: ``(PackedBatch of the candidates, gold index)`` for sample ``index``, or None."""
    from megatron_vrft.data.packing import encode_sample, pack

    sample = dataset.samples[index]
    reply = sample.target
    assistant = [m for m in sample.messages if m.get("role") == "assistant"]
    if not isinstance(reply, str) or not assistant or assistant[-1].get("content") != reply:
        return None
    found = candidates(reply, sample.columns)
    if found is None:
        return None
    try:
        decoded = sample.with_visuals()
        items = [encode_sample(_with_reply(decoded, r), dataset.tokenizer, dataset.rope) for r in found[0]]
    except (ValueError, OSError):  # media or template errors: the sample is not scored (eval only)
        return None
    for i, it in enumerate(items):
        items[i] = dataclasses.replace(it, **{f: getattr(it, f).to(pixel_dtype) for f in ("pixel_values", "pixel_values_videos")
                                              if getattr(it, f) is not None})
    return pack(items, pad_id), found[1]


def _score_loss(per_token: torch.Tensor, mb: Any, gold: int):
    """Per-token losses ``[1, T]`` -> (0, 1, {"acc": [correct, 1]}) with correct = the gold candidate
    has the strictly highest reply log-likelihood (= lowest summed loss over its target tokens)."""
    mask = mb.loss_mask.to(per_token.device)[0]
    seg = torch.repeat_interleave(torch.arange(len(mb.cu_seqlens) - 1, device=per_token.device),
                                  torch.diff(mb.cu_seqlens.long()).to(per_token.device))
    nll = torch.zeros(len(mb.cu_seqlens) - 1, dtype=torch.float64, device=per_token.device)
    nll = nll.index_add(0, seg, (per_token[0].double() * mask))[: len(mb.sample_ids)]
    others = torch.cat([nll[:gold], nll[gold + 1:]])
    correct = float(bool((nll[gold] < others).all()))
    zero = per_token.sum() * 0.0
    return zero, torch.tensor(1, dtype=torch.int), {"acc": torch.tensor([correct, 1.0])}


def _forward(data_iterator, model, *, device, gold):
    from megatron_vrft.trainer.sft import model_inputs

    mb = next(data_iterator)
    return model(**model_inputs(mb, device), labels=mb.labels.to(device)), partial(_score_loss, mb=mb, gold=gold)


def _share(obj: Any, stream: Any) -> Any:
    """The leader's object on every rank of its model-parallel group."""
    from megatron.core import parallel_state as ps

    group = ps.get_model_parallel_group()
    if dist.get_world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=stream.replica.leader, group=group)
    return box[0]


def _accuracy(run: Any) -> Optional[tuple[float, int]]:
    from megatron_vrft.trainer.step import run_schedule

    stream = run.eval
    dataset = getattr(stream.stream, "dataset", None) if stream.replica.is_leader else None
    inner = getattr(dataset, "inner", dataset)
    pixel_dtype = getattr(dataset, "pixel_dtype", torch.float32)
    reports = []
    n = stream.sampler.num_samples
    for index in range(stream.replica.dp_rank, n, stream.replica.dp_size):
        item = _candidate_batch(inner, index, stream.pad_id, pixel_dtype) if inner is not None else None
        item = _share(item, stream)
        if item is None:
            continue
        batch, gold = item
        reports += run_schedule(run, partial(_forward, device=run.dist.device, gold=gold), [batch], forward_only=True)
    correct, scored = _global_sum(reports, "acc")
    return (correct / scored, int(scored)) if scored > 0 else None


def _global_sum(reports: list[dict], key: str) -> list[float]:
    """Σ of the ``key`` tensors over the micro-batches of all DP ranks, on every rank (the last PP
    stage holds the reports; as ``step.step_loss`` but the sums themselves)."""
    from megatron.core import parallel_state as ps

    total = torch.zeros(2, dtype=torch.float64)
    for r in reports:
        total += r[key].detach().to("cpu", torch.float64)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    total = total.to(device)
    if ps.is_pipeline_last_stage() and ps.get_data_parallel_world_size() > 1:
        dist.all_reduce(total, group=ps.get_data_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(total, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group())
    return total.tolist()


def _eval_loss(run: Any) -> tuple[float, int]:
    from megatron_vrft.trainer.sft import _forward_step
    from megatron_vrft.trainer.step import run_schedule, step_loss

    run.eval.restart()
    step = partial(_forward_step, agg="token_mean", device=run.dist.device)
    reports, samples = [], 0
    while (batch := run.eval.next_batch()) is not None:
        reports += run_schedule(run, step, batch.micro_batches, forward_only=True)
        samples += batch.num_samples
    return step_loss(reports), samples


def evaluate(run: Any) -> dict[str, float]:
    """Collective: eval loss (+ accuracy for classification data) of the current model; rank 0 writes
    ``<logging.output_dir>/eval.json``. Returns ``{}`` when the run has no eval data."""
    if run.eval is None:
        return {}
    for chunk in run.model:
        chunk.eval()
    try:
        with torch.no_grad():
            loss, samples = _eval_loss(run)
            acc = _accuracy(run)
    finally:
        for chunk in run.model:
            chunk.train()
    out = {"eval/loss": loss, "eval/samples": samples}
    if acc is not None:
        out["eval/accuracy"], out["eval/accuracy_samples"] = acc
    if not dist.is_initialized() or dist.get_rank() == 0:
        path = Path(run.cfg.logging.output_dir) / EVAL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"step": int(run.step), **out}, indent=2) + "\n")
        tmp.replace(path)
    return out

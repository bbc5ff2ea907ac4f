"""HF rollout engine: a transformers ``Qwen2_5_VLForConditionalGeneration`` sampling with the
project's mRoPE positions, kept in sync with the trainer by the same weight stream as vLLM.

Why a hand-written decoding loop instead of ``generate()``: transformers 5.23 computes the 3-D
positions itself (``get_rope_index``), and after a video whose temporal extent exceeds its spatial
extent it places the following text differently from the released convention that training and
vLLM use (``rope_index`` "qwen" mode). Here the prompt's positions are the `SequenceItem`'s and each
generated token ``k`` sits at ``max(prompt positions) + 1 + k`` on all three axes, exactly what
`data.packing.grpo_item` / `rope_index.extend_positions` give the trainer.

One prefill per prompt (one ViT pass); the prompts' KV caches are left-padded to the longest
prompt (padded keys masked), joined, repeated ``n`` times, and all prompts' ``n`` completions decode
as one batch (one forward per new token for the whole call, not one per prompt). Sampling: temperature, then top-k / top-p (the distribution the
logprobs refer to, see `rollout.base`), one ``torch.Generator`` per prompt seeded ``prompt_seed(i)``.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from megatron_vrft.models.qwen2_5_vl.weights import read_hf_key
from megatron_vrft.rollout.base import Completion, RolloutError, SamplingParams, stop_token_ids

__all__ = ["HFEngine", "sample_next", "filter_logits"]


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering: logits [N, V] -> [N, V] with dropped entries -inf.

    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (at least
    one token), as vLLM does.
    """
    if top_k != -1 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step. logits [N, V] float32 -> (tokens [N] int64, logprobs [N] float32 of the
    sampled tokens under the sampling distribution)."""
    if sampling.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(-1)
    else:
        logp = torch.log_softmax(filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p), dim=-1)
        tokens = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
    return tokens, logp.gather(1, tokens[:, None])[:, 0]


def _media_kwargs(seq) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if seq.pixel_values is not None:
        kw.update(pixel_values=seq.pixel_values, image_grid_thw=seq.image_grid_thw)
    if seq.pixel_values_videos is not None:
        kw.update(pixel_values_videos=seq.pixel_values_videos, video_grid_thw=seq.video_grid_thw)
    return kw


def _left_pad_cat(parts: list[torch.Tensor], length: int) -> torch.Tensor:
    """KV tensors [1, heads, L_p, head_dim] -> [P, heads, length, head_dim], zeros before each."""
    return torch.cat([torch.nn.functional.pad(t, (0, 0, length - t.shape[-2], 0)) for t in parts])


class HFEngine:
    """See the module docstring. ``model``: an HF Qwen2.5-VL (eval mode); ``stop_ids``: EOS ids."""

    def __init__(self, model, tokenizer, stop_ids: list[int]):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stop_ids = torch.tensor(stop_ids, dtype=torch.long)
        cfg = model.config
        self.media_ids = torch.tensor([cfg.image_token_id, cfg.video_token_id], dtype=torch.long)
        # canonical HF name -> the model's tensor (transformers 5 keeps other in-memory names)
        self._params = {read_hf_key(n): t for n, t in model.state_dict(keep_vars=True).items()}

    @classmethod
    def from_pretrained(cls, model_dir: str, hf_config: Any, *, tokenizer=None, dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, config=hf_config, dtype=dtype)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
        return cls(model, tokenizer, stop_token_ids(model_dir, hf_config, tokenizer))

    # ---- weights -------------------------------------------------------------------------------
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in named_tensors:
            target = self._params.get(read_hf_key(name))
            if target is None:
                raise RolloutError(f"HF engine: the model has no parameter {name!r}")
            if tuple(target.shape) != tuple(tensor.shape):
                raise RolloutError(f"HF engine: {name} has shape {list(target.shape)}, update gives {list(tensor.shape)}")
            target.copy_(tensor)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The engine's weights by canonical HF name (what `update_weights` takes)."""
        return {n: t.detach() for n, t in self._params.items()}

    def sleep(self) -> None:
        """Nothing to release: the HF engine is a debugging / reference engine."""

    def wake(self) -> None:
        """See `sleep`."""

    # ---- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list, sampling: SamplingParams) -> list[list[Completion]]:
        seqs, gens = [], []
        for i, item in enumerate(prompts):
            if item.sequence is None:
                raise RolloutError(f"prompt {i} (position {item.position}) has no sequence: a skipped item cannot be generated")
            seed = sampling.prompt_seed(i)
            seqs.append(item.sequence)
            gens.append(None if seed is None else torch.Generator().manual_seed(seed))
        return self._generate_batch(seqs, sampling, gens) if seqs else []

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache=None, attention_mask=None, **media):
        out = self.model(input_ids=input_ids, position_ids=position_ids, past_key_values=cache, use_cache=True,
                         attention_mask=attention_mask, **media)
        return out.logits[:, -1].float(), out.past_key_values

    def _prefill(self, seqs: list) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """One forward (one ViT pass) per prompt, then the P caches joined into one batch cache of
        P x n rows, prompt-major, each prompt's keys left-padded to the longest prompt.

        Returns (last-position logits [P, V], the cache, key mask [P, L_max] (1 = real; None when
        all prompts have the same length, so no padding and no mask))."""
        logits, caches = [], []
        for seq in seqs:
            lg, cache = self._forward(seq.input_ids[None], seq.position_ids[:, None, :], **_media_kwargs(seq))
            logits.append(lg)
            caches.append(cache)
        lens = [len(s) for s in seqs]
        longest = max(lens)
        mask = None
        if min(lens) != longest:
            mask = torch.zeros(len(seqs), longest, dtype=torch.long)
            for p, n in enumerate(lens):
                mask[p, longest - n:] = 1
        joined = caches[0]
        if len(caches) > 1:
            for layer, parts in zip(joined.layers, zip(*(c.layers for c in caches))):
                layer.keys = _left_pad_cat([part.keys for part in parts], longest)
                layer.values = _left_pad_cat([part.values for part in parts], longest)
        return torch.cat(logits), joined, mask

    def _generate_batch(self, seqs: list, sampling: SamplingParams, gens: list) -> list[list[Completion]]:
        """All prompts' completions decode as one batch of P x n rows (row ``p * n + r`` is completion
        ``r`` of prompt ``p``). Each prompt's rows sample from its own generator, so a prompt's
        completions do not depend on the other prompts of the call. Positions per prompt: generated
        token ``k`` sits at ``max(its prompt positions) + 1 + k`` (left padding shifts no position:
        positions are given, and padded keys are masked out)."""
        n, P = sampling.n, len(seqs)
        logits, cache, mask = self._prefill(seqs)
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, dim=0)
        if mask is not None:
            mask = mask.repeat_interleave(n, dim=0)
        next_pos = torch.tensor([int(s.position_ids.max()) + 1 for s in seqs]).repeat_interleave(n)
        rows = P * n
        tokens, logprobs = [], []
        length = torch.full((rows,), sampling.max_new_tokens, dtype=torch.long)
        done = torch.zeros(rows, dtype=torch.bool)
        finished = torch.zeros(rows, dtype=torch.bool)  # ended by EOS
        for step in range(sampling.max_new_tokens):
            sampled = [sample_next(logits[p * n:(p + 1) * n], sampling, gens[p]) for p in range(P)]
            tok, lp = torch.cat([t for t, _ in sampled]), torch.cat([x for _, x in sampled])
            tokens.append(tok)
            logprobs.append(lp)
            eos = torch.isin(tok, self.stop_ids) & ~done
            media = torch.isin(tok, self.media_ids) & ~done  # cut before a placeholder (see base.Completion)
            length[eos] = step + 1
            length[media] = step
            finished[eos] = True
            done |= eos | media
            if bool(done.all()) or step + 1 == sampling.max_new_tokens:
                break
            # finished rows keep decoding (their tokens are cut off below): one batch, no reshuffling
            pos = (next_pos + step).view(1, rows, 1).expand(3, rows, 1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            logits, cache = self._forward(tok[:, None], pos, cache, attention_mask=mask)
        ids, lps = torch.stack(tokens, 1), torch.stack(logprobs, 1)
        result: list[list[Completion]] = [[] for _ in range(P)]
        for r in range(rows):
            c = int(length[r])
            row = ids[r, :c].clone()
            result[r // n].append(Completion(token_ids=row, logprobs=lps[r, :c].clone(),
                                             text=self.tokenizer.decode(row.tolist(), skip_special_tokens=True),
                                             finish_reason="stop" if bool(finished[r]) else "length"))
        return result

    @torch.no_grad()
    def score(self, seq, completion_ids, temperature: float = 1.0) -> torch.Tensor:
        """Teacher-forced float32 [C] ``log_softmax(logits / T)`` of ``completion_ids`` [C] after the
        prompt ``seq`` (a `SequenceItem`), positions as `grpo_item` gives the trainer (reference for
        the engines' logprobs; T = 0 scores at T = 1, as greedy sampling reports)."""
        from megatron_vrft.data.packing import grpo_item

        full = grpo_item(seq, completion_ids)
        logits = self.model(input_ids=full.input_ids[None], position_ids=full.position_ids[:, None, :],
                            **_media_kwargs(seq)).logits[0].float()
        c = len(full) - len(seq)
        logp = torch.log_softmax(logits[len(seq) - 1: len(full) - 1] / (temperature or 1.0), dim=-1)
        return logp.gather(1, full.input_ids[len(seq):, None])[:, 0] if c else logp.new_zeros(0)

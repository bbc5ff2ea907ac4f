"""The rollout engine interface shared by the vLLM and the HF engine, and the engine factory.

An engine turns GRPO prompts into sampled completions and takes weight updates from the trainer:

    engine = make_engine(cfg, hf_config, model_dir)          # cfg.rollout.engine: "vllm" | "hf"
    sampling = SamplingParams.from_config(cfg.rollout, n=cfg.grpo.num_generations, seed=cfg.seed + step)
    groups = engine.generate(items, sampling)                 # [len(items)][sampling.n] Completion
    engine.update_weights(named_tensors)                      # canonical HF names, full tensors
    engine.sleep(); ...; engine.wake()                        # free / take back memory (vLLM on GPU)

Prompts are `data.loader.LoadedItem`s: the decoded `Sample` (frames + `VideoInfo`, the same frames
the trainer patchified) and the prompt `SequenceItem` (token ids with vision pads expanded, the
project's mRoPE position ids). Both engines feed exactly those ids, frames and positions, so the
trainer's teacher-forced logprobs of a completion match the engine's.

`Completion.logprobs` are the log-probabilities of the sampled tokens under the distribution the
engine sampled from: ``log_softmax(logits / temperature)``, restricted and renormalised by top-k /
top-p when those are on (with ``top_p = 1`` and ``top_k = -1``, the GRPO default, it is exactly the
trainer's ``log_softmax(logits / T)``). Temperature 0 means greedy; its logprobs are ``log_softmax(logits)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol, runtime_checkable

import torch

__all__ = ["SamplingParams", "Completion", "RolloutEngine", "RolloutError", "make_engine", "stop_token_ids"]


_PROMPT_SEED_STRIDE = 100_003  # > any group size: prompt streams of one call never overlap


class RolloutError(RuntimeError):
    """A rollout engine cannot serve a request (bad prompt, unsupported option, engine failure)."""


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled (engine independent).

    n: completions per prompt (GRPO group size); temperature: 0 = greedy; top_p in (0, 1];
    top_k: -1 = off; max_new_tokens: generation limit (finish_reason "length" when reached);
    seed: base seed, None = unseeded. Prompt ``i`` of a `generate` call is sampled from its own
    stream, seed ``prompt_seed(i)``, spaced so that vLLM's per-completion seeds (``+ 0 .. n - 1``)
    never overlap another prompt's; the caller varies ``seed`` per step (e.g. ``cfg.seed + step``).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 512
    seed: int | None = None

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"SamplingParams.top_k must be -1 (off) or >= 1, got {self.top_k}")
        if self.n >= _PROMPT_SEED_STRIDE:
            raise ValueError(f"SamplingParams.n must be < {_PROMPT_SEED_STRIDE}, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @classmethod
    def from_config(cls, rollout_cfg: Any, *, n: int, seed: int | None) -> "SamplingParams":
        """From ``cfg.rollout`` (temperature, top_p, top_k, max_new_tokens), ``n`` = ``grpo.num_generations``."""
        return cls(n=n, temperature=float(rollout_cfg.temperature), top_p=float(rollout_cfg.top_p),
                   top_k=int(rollout_cfg.top_k), max_new_tokens=int(rollout_cfg.max_new_tokens), seed=seed)

    def prompt_seed(self, i: int) -> int | None:
        if self.seed is None:
            return None
        return (self.seed * 1_000_003 + i * _PROMPT_SEED_STRIDE) % 2**31


@dataclass
class Completion:
    """One sampled completion.

    token_ids: int64 [C] generated ids, including the EOS token when one was produced (C may be 1:
    an EOS-first completion); logprobs: float32 [C], the engine's logprob of each sampled token (see
    the module docstring); text: decoded without special tokens; finish_reason: "stop" (EOS) or
    "length" (max_new_tokens reached, or cut at a sampled media placeholder).

    A sampled ``<|image_pad|>`` / ``<|video_pad|>`` ends the completion before it (the token is not
    kept, ``finish_reason`` "length"): a placeholder without media cannot be fed back to the model,
    so the trainer could not score it. The kept tokens' logprobs stay those of the unrestricted
    distribution; C may then be 0.
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    text: str
    finish_reason: str

    def __len__(self) -> int:
        return int(self.token_ids.numel())


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompts: list, sampling: SamplingParams) -> list[list[Completion]]:
        """``sampling.n`` completions per prompt (`data.loader.LoadedItem`), in prompt order."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads full tensors by canonical HF name (``weights.read_hf_key`` layout); may be a subset
        of the model (one bucket of a weight sync) made of whole units (`rollout.sync.block_key`:
        a transformer block, the merger, ...); caches that depend on weights are dropped."""

    def sleep(self) -> None:
        """Releases accelerator memory between rollouts (no-op where unsupported)."""

    def wake(self) -> None:
        """Takes the memory back before the next `generate` / `update_weights`."""


def stop_token_ids(model_dir: str | None, hf_config: Any, tokenizer) -> list[int]:
    """EOS ids that end a completion: ``generation_config.json``'s ``eos_token_id`` (int or list)
    when the model directory has one, else the model config's, plus the tokenizer's EOS token."""
    ids: list[int] = []
    gen_eos = None
    if model_dir is not None:
        from transformers import GenerationConfig

        try:
            gen_eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
        except OSError:  # no generation_config.json in the directory
            gen_eos = None
    for value in (gen_eos, getattr(hf_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        for i in ([value] if isinstance(value, int) else list(value or [])):
            if i not in ids:
                ids.append(int(i))
    if not ids:
        raise RolloutError(f"no EOS token id found (model dir {model_dir}, config, tokenizer): completions could never stop")
    return ids


def make_engine(cfg: Any, hf_config: Any, model_dir: str, *, tokenizer=None, dtype: torch.dtype | None = None):
    """The engine ``cfg.rollout.engine`` names, loaded from ``model_dir`` (an HF Qwen2.5-VL
    directory with tokenizer; its weights are replaced by the first weight sync).

    dtype: engine dtype; default from ``cfg.model.dtype`` (fp32 -> float32, bf16 -> bfloat16).
    """
    name = cfg.rollout.engine
    if dtype is None:
        dtype = torch.float32 if cfg.model.dtype == "fp32" else torch.bfloat16
    if name == "hf":
        from megatron_vrft.rollout.hf import HFEngine

        return HFEngine.from_pretrained(model_dir, hf_config, tokenizer=tokenizer, dtype=dtype)
    if name == "vllm":
        from megatron_vrft.rollout.vllm import VLLMEngine

        return VLLMEngine(model_dir, hf_config, cfg.rollout, dtype=dtype, seed=cfg.seed, tokenizer=tokenizer)
    raise RolloutError(f"rollout.engine: unknown engine {name!r}; use 'vllm' or 'hf'")

"""vLLM rollout engine (``rollout.engine: vllm``): an in-process ``vllm.LLM`` colocated with training.

What the engine is given, so that it computes exactly what the trainer scores:

- **Token ids, not text**: the prompt `SequenceItem`'s ids with each run of vision pads collapsed to
  one pad (vLLM expands it again from the processed grid), so vLLM sees the trainer's chat template
  and tokenisation, not a re-rendering of them.
- **The trainer's frames**: `Visual.frames` (already sampled and resized by the data pipeline) with
  resizing and frame sampling turned off in vLLM's HF processor (``do_resize=False``,
  ``do_sample_frames=False``), so the grids and pixels are the trainer's. Videos carry their
  metadata (``fps``, ``frames_indices``, ``total_num_frames`` of the sampled range, relative to the
  clip start): the HF processor's ``sampled_fps = len(frames_indices) / total_num_frames * fps`` is
  then bit-equal to the trainer's ``VideoInfo.sample_fps`` and ``second_per_grid_ts`` is identical
  (checked per request; a mismatch is an error, not a silent wrong mRoPE).
- **Sampling**: ``n``, temperature, top-p/k, ``max_tokens``, a per-prompt seed, ``logprobs=0`` with
  ``logprobs_mode="processed_logprobs"`` (the sampled token's logprob after temperature and top-k/p,
  the quantity `rollout.base` defines), EOS ids from the model directory.

In-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): weight pushes hand tensors over without
serialisation. Its side effects on the trainer process are contained here: vLLM's CPU worker sets
the torch thread count and replaces ``torch.set_num_threads`` by a no-op (both restored), reseeds the
global RNGs at start and consumes the torch RNG for unseeded requests (torch / numpy / random states
are saved and restored around construction and every call), and shutting the engine down destroys
the default process group (the engine is never shut down before the process ends). Under
``torchrun`` (gloo or nccl already initialised) it runs with ``distributed_executor_backend=
"external_launcher"``: one engine per rank at vLLM TP=1, or one TP group across ranks, which must then
pass the same prompts. Sleep mode (level 1: weights to host memory, KV cache freed) is used on GPU
when ``rollout.sleep_mode`` is set; vLLM does not support it on CPU, where sleep/wake are no-ops.

Weight updates: ``collective_rpc("reload_weights", weights_iterator=[(hf_name, tensor)],
is_checkpoint_format=True)`` (the path that works on CPU, where vLLM repacks linear weights after
loading). vLLM rebuilds each layer from what one call gives it, so a call must carry whole units
(`rollout.sync.block_key`; checked, a partial unit is an error). Then the encoder cache (ViT outputs of repeated media) and the prefix cache (KV of the old
weights) are reset, after every update.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Any, Iterable

import numpy as np
import torch

from megatron_vrft.models.qwen2_5_vl.weights import read_hf_key
from megatron_vrft.rollout.base import Completion, RolloutError, SamplingParams, stop_token_ids

__all__ = ["VLLMEngine", "vllm_prompt", "video_metadata"]


@contextmanager
def contained_side_effects():
    """Restores the host's RNG states and torch thread setting after vLLM code ran."""
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        if torch.set_num_threads is not set_threads:
            torch.set_num_threads = set_threads
        torch.set_num_threads(threads)


def video_metadata(visual, ref) -> dict[str, Any]:
    """vLLM/HF video metadata for a decoded `Visual` (``ref``: its `MediaRef`, for the clip range).

    ``total_num_frames`` is the number of frames in the sampled range and ``frames_indices`` count
    from its start, so HF's ``sampled_fps`` equals ``VideoInfo.sample_fps`` (``n / in_range * fps``).
    """
    from megatron_vrft.data.video import frame_range

    info = visual.info
    start, _, in_range = frame_range(info.total_frames, info.fps, ref.options.get("video_start"),
                                     ref.options.get("video_end"), path=info.path)
    indices = [i - start for i in info.frame_indices]
    sampled_fps = len(indices) / in_range * info.fps  # transformers' VideoMetadata.sampled_fps
    if sampled_fps != info.sample_fps:
        raise RolloutError(f"{info.path}: vLLM would derive sampled fps {sampled_fps!r} from the metadata, the "
                           f"trainer uses {info.sample_fps!r}: second_per_grid_ts would differ")
    return {"fps": info.fps, "total_num_frames": in_range, "frames_indices": indices,
            "duration": in_range / info.fps, "width": info.width, "height": info.height, "video_backend": "opencv"}


def vllm_prompt(item, image_pad: int, video_pad: int) -> dict[str, Any]:
    """A vLLM ``TokensPrompt`` dict for a `LoadedItem`: the trainer's token ids (pad runs collapsed)
    and its decoded frames as ``multi_modal_data``."""
    from PIL import Image

    seq, sample = item.sequence, item.sample
    ids = seq.input_ids.tolist()
    collapsed = [t for k, t in enumerate(ids) if not (t in (image_pad, video_pad) and k > 0 and ids[k - 1] == t)]
    images, videos = [], []
    for visual, ref in zip(sample.visuals or [], sample.media):
        if visual.kind == "image":  # uint8 [3, H, W] -> PIL (exact)
            images.append(Image.fromarray(visual.frames.permute(1, 2, 0).contiguous().numpy()))
        else:  # uint8 [T, 3, H, W] -> numpy [T, H, W, 3] + metadata
            videos.append((visual.frames.permute(0, 2, 3, 1).contiguous().numpy(), video_metadata(visual, ref)))
    prompt: dict[str, Any] = {"prompt_token_ids": collapsed}
    mm = {k: v for k, v in (("image", images), ("video", videos)) if v}
    if mm:
        prompt["multi_modal_data"] = mm
    return prompt


class VLLMEngine:
    """See the module docstring. ``rollout_cfg``: ``cfg.rollout``; ``seed``: vLLM's engine seed."""

    def __init__(self, model_dir: str, hf_config: Any, rollout_cfg: Any, *, dtype: torch.dtype = torch.bfloat16,
                 seed: int = 0, tokenizer=None):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: tensors passed as they are
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(rollout_cfg.kv_cache_gb)))
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch.distributed as dist

        from megatron_vrft.models.qwen2_5_vl.weights import hf_shapes
        from megatron_vrft.rollout.sync import block_key

        self.image_pad, self.video_pad = hf_config.image_token_id, hf_config.video_token_id
        self._shapes = hf_shapes(hf_config)
        self._units: dict[str, list[str]] = {}
        for name in self._shapes:
            self._units.setdefault(block_key(name), []).append(name)
        self.sleep_mode = bool(rollout_cfg.sleep_mode) and on_gpu
        self.asleep = False
        limit = int(rollout_cfg.max_media_per_prompt)
        dtypes = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
        if dtype not in dtypes:
            raise RolloutError(f"vLLM engine dtype must be float32 or bfloat16 (model.dtype fp32 / bf16), got {dtype}")
        kw: dict[str, Any] = dict(
            model=model_dir, dtype=dtypes[dtype], seed=seed,
            enforce_eager=bool(rollout_cfg.enforce_eager) or not on_gpu, max_model_len=int(rollout_cfg.max_model_len),
            tensor_parallel_size=int(rollout_cfg.tensor_parallel_size),
            limit_mm_per_prompt={"image": limit, "video": limit},
            mm_processor_kwargs={"do_resize": False, "do_sample_frames": False},
            mm_processor_cache_gb=0, logprobs_mode="processed_logprobs", enable_sleep_mode=self.sleep_mode,
        )
        if on_gpu:
            kw["gpu_memory_utilization"] = float(rollout_cfg.gpu_memory_utilization)
        if dist.is_initialized() and dist.get_world_size() > 1:
            kw["distributed_executor_backend"] = "external_launcher"
        with contained_side_effects():
            from vllm import LLM

            self.llm = LLM(**kw)
        self.tokenizer = tokenizer or self.llm.get_tokenizer()
        self.stop_ids = stop_token_ids(model_dir, hf_config, self.tokenizer)

    # ---- generation ----------------------------------------------------------------------------
    def _params(self, sampling: SamplingParams, i: int):
        from vllm import SamplingParams as VSP

        return VSP(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                   max_tokens=sampling.max_new_tokens, seed=sampling.prompt_seed(i), logprobs=0,
                   stop_token_ids=self.stop_ids + [self.image_pad, self.video_pad], skip_special_tokens=True)

    def generate(self, prompts: list, sampling: SamplingParams) -> list[list[Completion]]:
        if self.asleep:
            raise RolloutError("vLLM engine is asleep: call wake() before generate()")
        for i, item in enumerate(prompts):
            if item.sequence is None:
                raise RolloutError(f"prompt {i} (position {item.position}) has no sequence: a skipped item cannot be generated")
        requests = [vllm_prompt(item, self.image_pad, self.video_pad) for item in prompts]
        params = [self._params(sampling, i) for i in range(len(prompts))]
        with contained_side_effects():
            outs = self.llm.generate(requests, params, use_tqdm=False)
        return [[self._completion(c) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]

    def _completion(self, c) -> Completion:
        ids = list(c.token_ids)
        if c.logprobs is None or len(c.logprobs) != len(ids):
            raise RolloutError(f"vLLM returned {0 if c.logprobs is None else len(c.logprobs)} logprobs for {len(ids)} tokens")
        lps = [step[t].logprob for t, step in zip(ids, c.logprobs)]
        if c.finish_reason not in ("stop", "length"):
            raise RolloutError(f"vLLM finished a completion with reason {c.finish_reason!r}")
        reason = c.finish_reason
        if ids and ids[-1] in (self.image_pad, self.video_pad):  # cut before a placeholder (base.Completion)
            ids, lps, reason = ids[:-1], lps[:-1], "length"
        return Completion(token_ids=torch.tensor(ids, dtype=torch.long), logprobs=torch.tensor(lps, dtype=torch.float32),
                          text=c.text, finish_reason=reason)

    # ---- weights and memory --------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.asleep:
            raise RolloutError("vLLM engine is asleep: call wake() before update_weights()")
        weights = [(read_hf_key(name), t.detach().contiguous()) for name, t in named_tensors]
        if not weights:
            return
        self._check_whole_units([n for n, _ in weights])
        with contained_side_effects():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
            self.llm.llm_engine.reset_encoder_cache()  # ViT outputs of media seen before the update
            self.llm.reset_prefix_cache()  # KV computed with the old weights

    def _check_whole_units(self, names: list[str]) -> None:
        """vLLM reloads layer by layer and rebuilds a fused layer (q/k/v, gate/up) from what one call
        gave it: a call must carry every tensor of each unit it touches, or the rest would be lost."""
        from megatron_vrft.rollout.sync import block_key

        unknown = sorted(set(names) - set(self._shapes))
        if unknown:
            raise RolloutError(f"vLLM engine: not parameters of this model: {unknown[:4]}")
        given = set(names)
        for key in {block_key(n) for n in names}:
            missing = sorted(n for n in self._units[key] if n not in given)
            if missing:
                raise RolloutError(f"vLLM engine: a weight update must carry all of {key} (vLLM reloads whole "
                                   f"layers); missing {missing[:4]}")

    def sleep(self) -> None:
        if self.sleep_mode and not self.asleep:
            self.llm.reset_prefix_cache()
            self.llm.sleep(level=1)
        self.asleep = True

    def wake(self) -> None:
        if self.sleep_mode and self.asleep:
            self.llm.wake_up()
        self.asleep = False

    def model(self):
        """The vLLM model object (in-process engine; tests read its mRoPE positions)."""
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model

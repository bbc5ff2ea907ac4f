"""The one typed config tree of a run: dataclasses with a help string per field, loaded from YAML
with dotted ``key=value`` overrides (OmegaConf structured configs), validated on load.

    from megatron_vrft.config import load_config
    cfg = load_config("examples/configs/demo.yaml", ["parallel.tp=2", "optimizer.lr=1e-5"])

An unknown key, a wrong type, a malformed YAML or an impossible combination raises ``ConfigError``
whose message names the file (and line, when known) and the dotted key. Entry scripts catch it and
print that one line (``python -m megatron_vrft.config CONFIG [overrides] --print`` shows the result).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "ConfigError",
    "RunConfig",
    "ModelConfig",
    "ParallelConfig",
    "DataConfig",
    "VideoConfig",
    "OptimizerConfig",
    "SFTConfig",
    "GRPOConfig",
    "RewardSpec",
    "RolloutConfig",
    "LoggingConfig",
    "CheckpointConfig",
    "load_config",
    "help_text",
]


class ConfigError(ValueError):
    """A user error in a config file or override; the message is one line naming file and key."""


def _f(default: Any = MISSING, help: str = "", *, factory=None):  # noqa: A002 - mirrors TRL's metadata
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    hf_path: Optional[str] = _f(None, "HF Qwen2.5-VL directory (config.json + safetensors): architecture and initial weights")
    mcore_path: Optional[str] = _f(None, "converted Megatron checkpoint (checkpoint_convert/hf_to_mcore.py) to load instead of hf_path's weights")
    dtype: str = _f("auto", "parameter/compute dtype: auto (bf16 on GPU, fp32 on CPU), bf16 or fp32")
    attention_backend: str = _f("auto", "core attention: auto (= sdpa today), sdpa or te (refused until wired)")
    first_stage_llm_layers: Optional[int] = _f(None, "LLM layers on PP stage 0 (which also runs the ViT); None = even split")
    freeze_vision: bool = _f(False, "freeze the vision tower (ViT blocks)")
    freeze_projector: bool = _f(False, "freeze the patch merger (vision -> LLM projection)")
    freeze_llm: bool = _f(False, "freeze the language model")
    recompute: str = _f("none", "activation recomputation of the LLM layers: none, selective (core attention) or full (every layer)")


@dataclass
class ParallelConfig:
    tp: int = _f(1, "tensor-parallel size")
    pp: int = _f(1, "pipeline-parallel size (the ViT runs on stage 0)")
    cp: int = _f(1, "context-parallel size (1 = off)")
    sequence_parallel: bool = _f(False, "Megatron sequence parallelism (needs tp > 1, GPU)")
    use_distributed_optimizer: bool = _f(False, "shard optimizer state across data-parallel ranks (ZeRO-1)")
    world_size: Optional[int] = _f(None, "expected number of processes; None = read WORLD_SIZE from torchrun at start")


@dataclass
class VideoConfig:
    fps: Optional[float] = _f(None, "frames sampled per second; None = the format's default (e.g. Video-R2 SFT 1, Open-R1-Video: 16 frames)")
    nframes: Optional[int] = _f(None, "fixed number of frames per video (exclusive with fps); None = the format's default")
    min_pixels: Optional[int] = _f(None, "min pixels per frame (default 128*28*28)")
    max_pixels: Optional[int] = _f(None, "max pixels per frame (default 768*28*28)")
    total_pixels: Optional[int] = _f(None, "pixel budget over all frames of a video")
    max_frames: Optional[int] = _f(None, "upper bound on frames per video; None = the format's default (qwen-vl-utils: 768)")
    image_min_pixels: Optional[int] = _f(None, "min pixels per image (default 4*28*28)")
    image_max_pixels: Optional[int] = _f(None, "max pixels per image (default 16384*28*28)")


@dataclass
class DataConfig:
    train_path: Optional[str] = _f(None, "training annotations (JSON, JSONL, CSV or parquet, per format)")
    eval_path: Optional[str] = _f(None, "evaluation annotations in the same format")
    format: str = _f("llava_conv", "dataset adapter: llava_conv, open_r1_video, time_r1_tg, rarft_riq, robo2vlm_mcq, video_r2, smarthome_vad")
    media_root: Optional[str] = _f(None, "directory that relative video/image paths resolve against")
    options: dict[str, Any] = _f(help="format-specific adapter options (e.g. robo2vlm key names)", factory=dict)
    video: VideoConfig = _f(help="video sampling", factory=VideoConfig)
    system_prompt: Optional[str] = _f(None, "system prompt; None = the format's default")
    max_seq_len: int = _f(4096, "longest sample in tokens (prompt + response); longer samples are skipped and counted")
    pack_tokens: int = _f(0, "token budget per packed micro-batch; 0 = no packing")
    micro_batch_size: int = _f(1, "samples per micro-batch when not packing")
    global_batch_size: int = _f(8, "samples per optimizer step over all data-parallel ranks")
    num_workers: int = _f(2, "DataLoader worker processes (video decode)")
    prefetch_factor: int = _f(2, "batches prefetched per worker")
    shuffle: bool = _f(True, "shuffle each epoch (deterministic from run seed and epoch)")


@dataclass
class OptimizerConfig:
    name: str = _f("adam", "optimizer: adam (AdamW) or sgd")
    lr: float = _f(1e-5, "peak learning rate (of the language model; of every module without its own lr)")
    vision_lr: Optional[float] = _f(None, "peak learning rate of the ViT (patch embedding + blocks); None = lr")
    merger_lr: Optional[float] = _f(None, "peak learning rate of the patch merger (ln_q + MLP); None = lr")
    min_lr: float = _f(0.0, "final learning rate of the decay (a module whose peak lr is lower ends at its peak)")
    weight_decay: float = _f(0.0, "decoupled weight decay")
    adam_beta1: float = _f(0.9, "Adam beta1")
    adam_beta2: float = _f(0.999, "Adam beta2")
    adam_eps: float = _f(1e-8, "Adam epsilon")
    clip_grad: float = _f(1.0, "global gradient-norm clip; 0 = off")
    lr_schedule: str = _f("cosine", "constant, linear or cosine decay after warmup")
    warmup_ratio: float = _f(0.0, "fraction of steps with linear warmup")
    warmup_steps: int = _f(0, "warmup steps (overrides warmup_ratio when > 0)")


@dataclass
class SFTConfig:
    epochs: int = _f(1, "passes over the training data")
    max_steps: int = _f(-1, "stop after this many optimizer steps; -1 = run all epochs")
    loss_agg: str = _f("token_mean", "token_mean (over all target tokens of the step) or sequence_mean")
    eval_interval: int = _f(0, "evaluate every N steps; 0 = only at the end (if eval_path is set)")
    eval_only: bool = _f(False, "evaluate the initial weights on data.eval_path and exit (no training)")
    max_nonfinite_steps: int = _f(3, "stop (after saving) when this many steps in a row have a NaN/inf loss or grad norm")


@dataclass
class RewardSpec:
    """One configured reward; the one type the config and ``rewards`` (registry, combine) share."""

    name: str = _f(MISSING, "reward name from the registry (e.g. accuracy, format, iou_v2) or 'pkg.module:fn'")
    weight: float = _f(1.0, "weight in the summed reward")
    options: dict[str, Any] = _f(help="keyword options of the reward (e.g. labels, judge base_url)", factory=dict)


@dataclass
class GRPOConfig:
    num_generations: int = _f(8, "completions per prompt (group size G)")
    prompts_per_step: int = _f(8, "prompts per rollout step (over all data-parallel ranks)")
    max_steps: int = _f(-1, "stop after this many rollout steps; -1 = run all epochs")
    epochs: int = _f(1, "passes over the prompt set")
    updates_per_rollout: int = _f(1, "optimizer steps per rollout batch (mini-batches)")
    clip_eps_low: float = _f(0.2, "PPO ratio clip: lower bound 1 - eps")
    clip_eps_high: float = _f(0.2, "PPO ratio clip: upper bound 1 + eps (DAPO clip-higher when > low)")
    kl_beta: float = _f(0.04, "weight of the KL penalty to the reference model; 0 = no reference model")
    kl_estimator: str = _f("k3", "KL estimator: k1, k2 or k3")
    scale_rewards: bool = _f(True, "divide advantages by the group std (False = Dr.GRPO)")
    advantage_eps: float = _f(1e-4, "added to the group std before dividing (TRL and the seeds' trainers: 1e-4)")
    loss_agg: str = _f("token_mean", "token_mean, sequence_mean or seq_mean_token_sum")
    rewards: list[RewardSpec] = _f(help="rewards and their weights", factory=list)


@dataclass
class RolloutConfig:
    engine: str = _f("vllm", "vllm (GPU) or hf (CPU, debugging, reference)")
    max_new_tokens: int = _f(512, "generation length limit")
    temperature: float = _f(1.0, "sampling temperature")
    top_p: float = _f(1.0, "nucleus sampling")
    top_k: int = _f(-1, "top-k sampling; -1 = off")
    gpu_memory_utilization: float = _f(0.5, "vLLM memory fraction when colocated")
    tensor_parallel_size: int = _f(1, "vLLM tensor parallel size")
    sleep_mode: bool = _f(True, "release vLLM memory during training phases")
    weight_sync_bucket_mb: int = _f(512, "bucket size for streaming weights to the engine")
    max_model_len: int = _f(8192, "vLLM context length (prompt + completion tokens)")
    max_media_per_prompt: int = _f(4, "vLLM limit of images and of videos per prompt")
    enforce_eager: bool = _f(False, "vLLM: no CUDA graphs (always eager on CPU)")
    kv_cache_gb: int = _f(1, "vLLM KV cache on CPU, whole GiB (VLLM_CPU_KVCACHE_SPACE); GPU uses gpu_memory_utilization")


@dataclass
class LoggingConfig:
    output_dir: str = _f("outputs/run", "where logs, TensorBoard events and exports go")
    log_interval: int = _f(1, "TensorBoard / W&B every N steps (metrics.jsonl gets every step)")
    tensorboard: bool = _f(True, "write TensorBoard events under output_dir/tb")
    wandb: bool = _f(False, "log to Weights & Biases (pip install megatron_vrft[wandb]; WANDB_MODE=offline honoured)")
    wandb_project: Optional[str] = _f(None, "W&B project")
    wandb_run_name: Optional[str] = _f(None, "W&B run name")
    progress_bar: bool = _f(True, "show a progress bar on rank 0")


@dataclass
class CheckpointConfig:
    save_dir: Optional[str] = _f(None, "where training checkpoints go; None = no saving")
    save_interval: int = _f(0, "save every N steps; 0 = only at the end")
    keep_last: int = _f(2, "complete checkpoints kept in save_dir (older ones deleted; only dirs this trainer wrote); 0 = all")
    resume: bool = _f(True, "resume from the newest complete checkpoint in save_dir if one exists (another TP/PP reshards)")
    pretrained_path: Optional[str] = _f(None, "initial weights of an earlier stage, instead of model.hf_path/mcore_path's: a trainer checkpoint (step_<N> dir, or a save_dir: its newest complete step), an HF dir (e.g. LoRA-merged) or a converted mcore checkpoint; a wrong path is an error, never a silent fallback")
    export_hf: bool = _f(False, "at the end write <logging.output_dir>/hf: config.json + safetensors (released key layout) + model.hf_path's tokenizer/processor files")


@dataclass
class RunConfig:
    mode: str = _f("sft", "sft or grpo")
    seed: int = _f(1234, "seed for init, data order and sampling")
    model: ModelConfig = _f(help="model", factory=ModelConfig)
    parallel: ParallelConfig = _f(help="parallelism", factory=ParallelConfig)
    data: DataConfig = _f(help="data", factory=DataConfig)
    optimizer: OptimizerConfig = _f(help="optimizer and LR schedule", factory=OptimizerConfig)
    sft: SFTConfig = _f(help="SFT", factory=SFTConfig)
    grpo: GRPOConfig = _f(help="GRPO", factory=GRPOConfig)
    rollout: RolloutConfig = _f(help="rollout engine", factory=RolloutConfig)
    logging: LoggingConfig = _f(help="logging", factory=LoggingConfig)
    checkpoint: CheckpointConfig = _f(help="checkpoints", factory=CheckpointConfig)


_CHOICES = {
    "mode": ("sft", "grpo"),
    "model.dtype": ("auto", "bf16", "fp32"),
    "model.attention_backend": ("auto", "sdpa", "te"),
    "model.recompute": ("none", "selective", "full"),
    "data.format": (
        "llava_conv", "open_r1_video", "time_r1_tg", "rarft_riq", "robo2vlm_mcq", "video_r2", "smarthome_vad",
    ),
    "optimizer.name": ("adam", "sgd"),
    "optimizer.lr_schedule": ("constant", "linear", "cosine"),
    "sft.loss_agg": ("token_mean", "sequence_mean"),
    "grpo.kl_estimator": ("k1", "k2", "k3"),
    "grpo.loss_agg": ("token_mean", "sequence_mean", "seq_mean_token_sum"),
    "rollout.engine": ("vllm", "hf"),
}


def _validate(cfg: RunConfig, world_size: Optional[int]) -> list[tuple[str, str]]:
    """Returns (dotted key, problem) pairs for impossible values and combinations."""
    problems: list[tuple[str, str]] = []

    def check(key: str, ok: bool, msg: str) -> None:
        if not ok:
            problems.append((key, msg))

    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        check(key, value in allowed, f"{value!r} is not one of {list(allowed)}")
    p = cfg.parallel
    for key in ("tp", "pp", "cp"):
        check(f"parallel.{key}", getattr(p, key) >= 1, "must be >= 1")
    ws = p.world_size or world_size
    if ws is not None and min(p.tp, p.pp, p.cp) >= 1:
        check(
            "parallel",
            ws % (p.tp * p.pp * p.cp) == 0,
            f"world size {ws} is not divisible by tp*pp*cp = {p.tp}*{p.pp}*{p.cp}",
        )
    check("parallel.sequence_parallel", not p.sequence_parallel or p.tp > 1, "needs parallel.tp > 1")
    check("model.first_stage_llm_layers", cfg.model.first_stage_llm_layers is None or p.pp > 1,
          "only meaningful with parallel.pp > 1")
    check("model", cfg.model.hf_path is not None or cfg.model.mcore_path is not None,
          "set model.hf_path (HF directory) or model.mcore_path (converted checkpoint)")
    check("optimizer.lr", cfg.optimizer.lr > 0, "must be > 0")
    check("optimizer.clip_grad", cfg.optimizer.clip_grad >= 0, "must be >= 0 (0 = off)")
    check("optimizer.warmup_ratio", 0.0 <= cfg.optimizer.warmup_ratio < 1.0, "must be in [0, 1)")
    check("data.train_path", cfg.data.train_path is not None, "is required")
    v = cfg.data.video
    check("data.video", v.fps is None or v.nframes is None, "set at most one of fps and nframes")
    check("data.global_batch_size", cfg.data.global_batch_size >= 1, "must be >= 1")
    check("logging.log_interval", cfg.logging.log_interval >= 1, "must be >= 1")
    check("checkpoint.keep_last", cfg.checkpoint.keep_last >= 0, "must be >= 0 (0 = keep all)")
    check("checkpoint.save_interval", cfg.checkpoint.save_interval >= 0, "must be >= 0 (0 = only at the end)")
    check("data.micro_batch_size", cfg.data.micro_batch_size >= 1, "must be >= 1")
    if ws is not None and min(p.tp, p.pp, p.cp) >= 1 and ws % (p.tp * p.pp * p.cp) == 0:
        dp = ws // (p.tp * p.pp * p.cp)
        check("data.global_batch_size", cfg.data.global_batch_size % dp == 0,
              f"{cfg.data.global_batch_size} is not divisible by the {dp} data-parallel ranks")
    check("sft.eval_only", not cfg.sft.eval_only or cfg.data.eval_path is not None, "needs data.eval_path")
    check("sft.max_nonfinite_steps", cfg.sft.max_nonfinite_steps >= 1, "must be >= 1")
    problems += _unimplemented(cfg)
    r = cfg.rollout
    check("rollout.top_p", 0 < r.top_p <= 1, "must be in (0, 1]")
    check("rollout.top_k", r.top_k == -1 or r.top_k >= 1, "must be -1 (off) or >= 1")
    check("rollout.weight_sync_bucket_mb", r.weight_sync_bucket_mb >= 1, "must be >= 1")
    check("rollout.max_model_len", r.max_model_len > r.max_new_tokens, "must exceed rollout.max_new_tokens")
    if cfg.mode == "grpo":
        g = cfg.grpo
        check("grpo.num_generations", g.num_generations >= 2, "GRPO needs at least 2 completions per prompt")
        check("grpo.rewards", len(g.rewards) > 0, "GRPO needs at least one reward")
        check("grpo.clip_eps_low", 0 < g.clip_eps_low < 1, "must be in (0, 1)")
        check("grpo.kl_beta", g.kl_beta >= 0, "must be >= 0")
        check("rollout.temperature", cfg.rollout.temperature > 0, "must be > 0 for sampling")
        check("grpo.clip_eps_high", g.clip_eps_high > 0, "must be > 0")
        check("grpo.advantage_eps", g.advantage_eps > 0, "must be > 0")
        check("grpo.prompts_per_step", g.prompts_per_step >= 1, "must be >= 1")
        if ws is not None and min(p.tp, p.pp, p.cp) >= 1 and ws % (p.tp * p.pp * p.cp) == 0:
            dp = ws // (p.tp * p.pp * p.cp)
            check("grpo.prompts_per_step", g.prompts_per_step % dp == 0,
                  f"{g.prompts_per_step} prompts do not split evenly over {dp} data-parallel ranks")
        check("grpo.updates_per_rollout", g.updates_per_rollout >= 1, "must be >= 1")
    if cfg.grpo.rewards:
        # Imported here: the registry fills up when the reward modules are imported.
        from megatron_vrft.rewards import spec_problems

        for i, key, msg in spec_problems(cfg.grpo.rewards):
            problems.append((f"grpo.rewards[{i}].{key}", msg))
    return problems


def _unimplemented(cfg: RunConfig) -> list[tuple[str, str]]:
    """Values the schema accepts but this installation cannot run: refused now, not ignored later."""
    import importlib.util

    import torch

    problems = []
    if cfg.parallel.cp > 1:
        problems.append(("parallel.cp", "context parallelism is not implemented yet; use parallel.cp=1"))
    if cfg.model.attention_backend == "te":
        installed = importlib.util.find_spec("transformer_engine") is not None
        problems.append(("model.attention_backend", "the transformer-engine attention path is not wired yet"
                         + ("" if installed else " (and transformer-engine is not installed)") + "; use auto or sdpa"))
    if cfg.parallel.sequence_parallel and not torch.cuda.is_available():
        problems.append(("parallel.sequence_parallel", "needs CUDA (mcore's CPU norm path asserts it off)"))
    return problems


def _key_line(path: Optional[str], dotted: str) -> Optional[int]:
    """1-based line of ``dotted`` in the YAML file (for error messages), or None."""
    if path is None or not dotted:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            node = yaml.compose(fh)
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in dotted.replace("[", ".[").split("."):
        if part.startswith("[") and part.endswith("]"):  # a list index, e.g. grpo.rewards[1]
            i = int(part[1:-1])
            if not isinstance(node, yaml.SequenceNode) or i >= len(node.value):
                break
            node = node.value[i]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def _where(path: Optional[str], key: str) -> str:
    if path is None:
        return "command line"
    line = _key_line(path, key)
    return f"{path}:{line}" if line else path


def load_config(
    path: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    *,
    world_size: Optional[int] = None,
) -> RunConfig:
    """YAML file + dotted ``key=value`` overrides -> a validated :class:`RunConfig`.

    ``world_size`` defaults to the ``WORLD_SIZE`` environment variable (set by torchrun) when
    present, so a parallel layout that cannot fit the launched processes fails before any work.
    """
    schema = OmegaConf.structured(RunConfig)
    merged = schema
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: config file not found")
        try:
            with open(path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            loc = f"{path}:{mark.line + 1}" if mark else path
            raise ConfigError(f"{loc}: malformed YAML: {getattr(e, 'problem', None) or e}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
        merged = _merge(schema, OmegaConf.create(raw), path)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"command line: override {item!r} is not of the form key=value")
        key = item.partition("=")[0]
        if not key:
            raise ConfigError(f"command line: override {item!r} has an empty key")
        try:
            dot = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as e:
            raise ConfigError(f"command line: {key}: cannot parse value: {str(e).splitlines()[0]}") from None
        merged = _merge(merged, dot, None, key)
    cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if world_size is None and "WORLD_SIZE" in os.environ:
        world_size = int(os.environ["WORLD_SIZE"])
    problems = _validate(cfg, world_size)
    if problems:
        key, msg = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ConfigError(f"{_where(path, key)}: {key}: {msg}{more}")
    return cfg


def _merge(base: DictConfig, other: DictConfig, path: Optional[str], override: str = "") -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except TypeError:
        # OmegaConf cannot merge `a.list.0.key=v` (a mapping) into a list.
        where = _where(path, override) if path else "command line"
        raise ConfigError(f"{where}: {override or '?'}: cannot set one element of a list; give the whole list, "
                          f"e.g. grpo.rewards='[{{name: accuracy}}]'") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or override or "?"
        if "not in struct" in str(e) or "Key '" in str(e) and "not in" in str(e):
            msg = "unknown key"
        else:
            msg = str(e).splitlines()[0]
        where = _where(path, key) if path else "command line"
        raise ConfigError(f"{where}: {key}: {msg}") from None


def help_text(cls: type = RunConfig, prefix: str = "") -> str:
    """``key (type, default): help`` lines for every field of the tree (for --help and docs)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if is_dataclass(hints[f.name]):
            lines.append(help_text(hints[f.name], key + "."))
            continue
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "<required>" if f.default is MISSING else f.default
        lines.append(f"  {key} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m megatron_vrft.config CONFIG.yaml [key=value ...]``: validate and print the config."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m megatron_vrft.config",
        description="Validate a megatron_vrft run config and print it resolved (YAML).",
        epilog="Fields:\n" + help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

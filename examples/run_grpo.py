"""GRPO training of Qwen2.5-VL on Megatron-Core, rollouts from a colocated engine (vLLM or HF).

Without --config it runs the self-contained CPU demo (megatron_vrft/demo/run.py: a synthetic video
task and a tiny model, SFT warm-up then GRPO, a held-out table in OUT/demo_table.{md,json}):

    torchrun --nproc-per-node 2 examples/run_grpo.py [--out outputs/demo] [--seed 0]

With a config (one process, or N with torchrun; tp * pp must divide N, the rest is data parallel):

    python examples/run_grpo.py --config examples/configs/tiny/rbft_grpo.yaml [key=value ...]
    torchrun --nproc-per-node 2 examples/run_grpo.py --config FILE parallel.tp=2 rollout.engine=hf

``--help`` lists every config key. A config error prints one line and exits with status 2; too
many non-finite steps in a row exit with status 1. With ``checkpoint.save_dir`` set, a rerun of the
same command resumes from the newest complete checkpoint. The step and its metrics: docs/grpo.md.
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_vrft.config import ConfigError, help_text, load_config  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="config keys:\n" + help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML run config (mode: grpo); without it: the CPU demo")
    p.add_argument("--out", default="outputs/demo", help="demo only: output directory (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="demo only: task, model and training seed")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    return p


def run_config(config: str, overrides: list[str]) -> int:
    """Loads ``config`` + ``overrides``, builds the run and trains; returns the exit status."""
    from megatron_vrft.data.sample import DataFormatError
    from megatron_vrft.trainer import loop
    from megatron_vrft.trainer.grpo import grpo_step
    from megatron_vrft.trainer.setup import build

    try:
        cfg = load_config(config, overrides)
        if cfg.mode != "grpo":
            raise ConfigError(f"{config}: mode: run_grpo.py runs mode 'grpo', the config says {cfg.mode!r}")
        run = build(cfg)
    except (ConfigError, DataFormatError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        loop.train(run, grpo_step)
    except loop.TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron_vrft").setLevel(logging.INFO)
    if args.config is None:
        if args.overrides:
            parser().print_usage(sys.stderr)
            print("error: key=value overrides need --config FILE (the demo takes only --out and --seed)", file=sys.stderr)
            return 2
        from megatron_vrft.demo.run import run_demo

        run_demo(args.out, seed=args.seed)
        return 0
    return run_config(args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())

"""Supervised fine-tuning of Qwen2.5-VL on Megatron-Core.

Run (one process, or N with torchrun; tp * pp must divide N, the rest is data parallel):

    python examples/run_sft.py --config examples/configs/demo_sft_cpu.yaml [key=value ...]
    torchrun --nproc-per-node 2 examples/run_sft.py --config FILE parallel.tp=2 optimizer.lr=1e-5

``--help`` lists every config key. A config error prints one line and exits with status 2. With
``checkpoint.save_dir`` set, a rerun of the same command resumes from the newest complete
checkpoint; ``sft.eval_only=true`` only evaluates the initial weights. See docs/training.md.
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_vrft.config import ConfigError, help_text, load_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="config keys:\n" + help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron_vrft").setLevel(logging.INFO)
    from megatron_vrft.data.sample import DataFormatError
    from megatron_vrft.trainer import loop, sft
    from megatron_vrft.trainer.eval import evaluate
    from megatron_vrft.trainer.setup import build

    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.mode != "sft":
            raise ConfigError(f"{args.config}: mode: run_sft.py runs mode 'sft', the config says {cfg.mode!r}")
        run = build(cfg)
    except (ConfigError, DataFormatError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if cfg.sft.eval_only:
        run.metrics.log(run.step, evaluate(run))
        run.metrics.close()
        return 0
    try:
        loop.train(run, sft.sft_step)
    except loop.TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

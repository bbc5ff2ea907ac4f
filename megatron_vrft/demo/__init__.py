"""The self-contained CPU demo (examples/run_grpo.py without --config): task, model shape, report."""

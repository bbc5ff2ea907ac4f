"""Run a function in N processes on one machine (gloo on CPU), as torchrun would, with a time limit.

Tests use it for the TP/PP/DP invariance checks: ``run_distributed(fn, world_size=2, args=...)``
starts the processes with torchrun-style env vars, each calls ``fn(rank, *args)``; results come back
through a queue as Python objects, tensors included. A process that fails re-raises its traceback
text in the parent; a run that exceeds ``timeout`` kills every process and raises ``TimeoutError``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import time
import traceback
from typing import Any, Callable

from megatron_vrft.runtime.distributed import free_port

__all__ = ["run_distributed"]


def _worker(fn, rank, world_size, port, args, out_queue, env):
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        # Pickled to bytes here: the queue's own pickler hands tensors over as shared-memory handles,
        # which die with this process before the parent reads them; plain pickle copies the data.
        out_queue.put((rank, True, pickle.dumps(fn(rank, *args))))
    except BaseException:  # noqa: BLE001 - the parent re-raises it with the traceback
        out_queue.put((rank, False, traceback.format_exc()))


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    *,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Runs ``fn(rank, *args)`` in ``world_size`` spawned processes; returns results by rank.

    ``fn`` must be importable (module level). Threads per process default to 1 so that 2 processes
    on a 2-core machine do not oversubscribe.
    """
    ctx = mp.get_context("spawn")
    out_queue = ctx.Queue()
    port = free_port()
    child_env = {"OMP_NUM_THREADS": "1", **(env or {})}
    # Not daemonic: mcore's checkpoint writer starts helper processes of its own.
    procs = [
        ctx.Process(
            target=_worker, args=(fn, r, world_size, port, args, out_queue, child_env)
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < world_size:
            try:
                rank, ok, payload = out_queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue_mod.Empty:
                raise TimeoutError(
                    f"distributed run of {fn.__name__} exceeded {timeout:.0f}s "
                    f"(finished ranks: {sorted(results)})"
                ) from None
            if not ok:
                raise RuntimeError(f"rank {rank} of {fn.__name__} failed:\n{payload}")
            results[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return [results[r] for r in range(world_size)]

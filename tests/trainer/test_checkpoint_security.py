"""Loading a crafted checkpoint never runs its pickled code: ``.metadata`` (torch DCP, plain pickle
in torch), ``common.pt`` and the ``ShardedObject`` bytes inside ``.distcp`` files (which DCP loads
with ``weights_only=False``) each carry an object whose ``__reduce__`` would create a file. Every
case must be refused with a CheckpointError naming the checkpoint, and the file must not appear.
Without ``checkpoint/safe_load.py`` each case creates the file (the "object" one even with torch's
weights-only default)."""

import os
import pickle

import pytest
import torch

from megatron_vrft.testing.spawn import run_distributed


class Evil:
    """Unpickling this creates ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


CASES = ["clean", "common", "metadata", "object"]


def _worker(rank, root, cases):
    """Per case: writes a small dist checkpoint under root/<case>, tampers with it, loads it."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    from megatron_vrft.checkpoint.atomic import CheckpointError
    from megatron_vrft.runtime import destroy_distributed, init_distributed
    from megatron_vrft.trainer.checkpoint import _load

    init_distributed()

    def state(obj):
        return {"w": ShardedTensor.from_rank_offsets("w", torch.ones(4)), "n": 3,
                "obj": ShardedObject("obj", obj, (1,), (0,), replica_id=0)}

    results = {}
    try:
        for case in cases:
            ckpt, marker = f"{root}/{case}", f"{root}/{case}.pwned"
            os.makedirs(ckpt)
            dist_checkpointing.save(state(Evil(marker) if case == "object" else {"a": torch.zeros(2)}), ckpt)
            if case == "common":
                torch.save({"n": Evil(marker)}, f"{ckpt}/common.pt")
            elif case == "metadata":
                with open(f"{ckpt}/.metadata", "wb") as fh:
                    pickle.dump(Evil(marker), fh)
            try:
                results[case] = ("loaded", repr(_load(state(None), ckpt)["n"]))
            except CheckpointError as e:
                results[case] = ("refused", str(e))
        return results
    finally:
        destroy_distributed()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("crafted")
    return root, run_distributed(_worker, 1, (str(root), CASES), timeout=180)[0]


@pytest.mark.parametrize("case", CASES)
def test_crafted_pickle_is_refused(outcomes, case):
    root, results = outcomes
    outcome, detail = results[case]
    assert not (root / f"{case}.pwned").exists(), f"{case}: the checkpoint's pickled code ran"
    if case == "clean":
        assert (outcome, detail) == ("loaded", "3")
        return
    assert outcome == "refused", (case, detail)
    assert detail.startswith("refusing to load ") and str(root / case) in detail and "\n" not in detail, detail

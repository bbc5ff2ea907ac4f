"""``collective.agree`` on 2 gloo processes: an error on one rank fails every rank at once with that
rank's message, inside ``save_mcore_checkpoint`` and ``live.export_hf_state`` too (before, the other
rank waited in the next collective until the process-group timeout: here 1 minute, so a hang fails
the test through ``run_distributed``'s 50 s limit)."""

import errno
from pathlib import Path

from megatron_vrft.testing.spawn import run_distributed
from megatron_vrft.testing.tiny_qwen import TINY_SHAPES, tiny_hf_model
from tests.convert.test_weights_dist import _stand_in_model

LIMIT = 50  # seconds for the whole 2-process run


def _outcome(fn):
    from megatron_vrft.runtime.collective import CollectiveError

    try:
        fn()
    except CollectiveError as e:
        return ("collective", e.rank, e.error_type, e.message, e.failed_ranks)
    except Exception as e:  # noqa: BLE001 - the test asserts on what came back
        return ("other", type(e).__name__, str(e))
    return ("ok",)


CASES = [(), (1,), (0, 1)]  # failing ranks


def _agree(rank):
    import torch.distributed as dist
    from torch.distributed.checkpoint.api import CheckpointException

    from megatron_vrft.runtime import destroy_distributed, init_distributed
    from megatron_vrft.runtime.collective import agree

    init_distributed(timeout_minutes=1)
    try:
        def block(failing):
            with agree("unit step"):
                if rank in failing:
                    raise ValueError(f"bad input on rank {rank}")
            dist.barrier()

        def dcp_block():  # torch DCP's CheckpointException is a BaseException: agreed on when named
            with agree("dcp step", errors=(Exception, CheckpointException)):
                if rank == 1:
                    raise CheckpointException("save failed", {})
            dist.barrier()

        def own_group(groups):  # a one-rank group: no collective, the same error
            with agree("local step", group=groups[rank]):
                if rank == 1:
                    raise ValueError("bad input on rank 1")

        groups = [dist.new_group([0]), dist.new_group([1])]
        return [*(_outcome(lambda: block(failing)) for failing in CASES), _outcome(dcp_block),
                _outcome(lambda: own_group(groups))]
    finally:
        destroy_distributed()


def test_agree_fails_every_rank_with_the_first_error():
    per_rank = run_distributed(_agree, 2, timeout=LIMIT)
    for r in per_rank:
        assert r[0] == ("ok",)
        assert r[1] == ("collective", 1, "ValueError", "bad input on rank 1", [1])
        assert r[2] == ("collective", 0, "ValueError", "bad input on rank 0", [0, 1])
        assert r[3] == ("collective", 1, "CheckpointException", "CheckpointException ranks:dict_keys([])\n", [1])
    assert per_rank[0][4] == ("ok",)
    assert per_rank[1][4] == ("collective", 1, "ValueError", "bad input on rank 1", [1])


def _model(cfg, tp):
    from megatron.core import parallel_state as ps

    from megatron_vrft.models.qwen2_5_vl import weights as W

    shapes = W.mcore_shapes(cfg, tp_rank=ps.get_tensor_model_parallel_rank(), tp_size=tp,
                            pp_rank=ps.get_pipeline_model_parallel_rank(), pp_size=1)
    return _stand_in_model(shapes)


def _save(rank, cfg_dict, root):
    from megatron_vrft.checkpoint import mcore_io
    from megatron_vrft.models.qwen2_5_vl import weights as W
    from megatron_vrft.runtime import destroy_distributed, init_distributed

    init_distributed(tp=2, timeout_minutes=1)
    try:
        cfg = W.as_hf_config(cfg_dict)
        model = _model(cfg, 2)
        refused = _outcome(lambda: mcore_io.save_mcore_checkpoint(model, Path(root) / "models", cfg))
        if rank == 1:
            def add(self, name, tensor):
                raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

            mcore_io.SafetensorsWriter.add = add
        disk_full = _outcome(lambda: mcore_io.save_mcore_checkpoint(model, Path(root) / "ck", cfg))
        return refused, disk_full
    finally:
        destroy_distributed()


def test_save_fails_every_rank_when_one_rank_fails(tmp_path):
    """Rank 0 refuses a user's directory; then rank 1 cannot write its rank file."""
    cfg = tiny_hf_model(seed=0, **TINY_SHAPES["tied_mqa"]).config.to_dict()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.txt").write_text("user data\n")
    for refused, disk_full in run_distributed(_save, 2, (cfg, str(tmp_path)), timeout=LIMIT):
        assert refused[:3] == ("collective", 0, "CheckpointError"), refused
        assert f"{tmp_path / 'models'} already exists" in refused[3]
        assert disk_full[:3] == ("collective", 1, "OSError") and "No space left on device" in disk_full[3], disk_full
    # no checkpoint, no temp dir, the user's directory untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["mine.txt"]


def _export(rank, cfg_dict, fail_at):
    from megatron_vrft.models.qwen2_5_vl import live
    from megatron_vrft.models.qwen2_5_vl import weights as W
    from megatron_vrft.runtime import destroy_distributed, init_distributed

    init_distributed(tp=2, timeout_minutes=1)
    try:
        cfg = W.as_hf_config(cfg_dict)
        model = _model(cfg, 2)
        if rank == 1:
            merge, calls = live.merge_param, []

            def failing_merge(param, shards, d):
                calls.append(param)
                if len(calls) == fail_at:
                    raise RuntimeError("merge failed on this rank")
                return merge(param, shards, d)

            live.merge_param = failing_merge
        return _outcome(lambda: sum(1 for _ in live.export_hf_state(model, cfg)))
    finally:
        destroy_distributed()


def test_export_fails_every_rank_when_one_rank_fails_a_family():
    cfg = tiny_hf_model(seed=0, **TINY_SHAPES["tied_mqa"]).config.to_dict()
    res = run_distributed(_export, 2, (cfg, 3), timeout=LIMIT)
    for r in res:
        assert r[:4] == ("collective", 1, "RuntimeError", "merge failed on this rank"), r

"""Training data across ranks (`trainer.data`), 2 gloo processes, real decoding of synthetic mp4s.

- TP=2: only the replica's leader decodes (the other rank has no DataStream) and both ranks get the
  same micro-batches, pixels included;
- PP=2: stage 1 gets the token-side tensors but no pixels;
- DP=2 with a corrupt video and token-budget packing: each DP rank reads a disjoint share, every step
  has exactly global_batch_size samples (the skipped one refilled), both ranks run the same number
  of micro-batches per step and stop at the same step (no hang);
- resume at another DP size: the state a DP=2 stream hands out is DP-independent; a DP=1 stream
  (TP=2) loaded with it continues from the global position in the epoch's order: it reads every
  sample the uninterrupted run still had to, plus the in-flight one a faster rank had consumed;
- SFT items leave the worker without frames or the sample's own pixel copy, in the model dtype.
"""

import json

import pytest
import torch

from megatron_vrft.testing.spawn import run_distributed

GLOBAL_BATCH = 4
# Samples are 169..185 tokens: two fit in 350 only when both are short, so ranks pack differently.
BUDGET = 350


def _dataset(root, pixel_dtype=torch.float32):
    from megatron_vrft.data import load_samples
    from megatron_vrft.data.loader import SampleDataset
    from megatron_vrft.data.template import VisionTokenIds
    from megatron_vrft.data.testing import build_tiny_tokenizer
    from megatron_vrft.models.qwen2_5_vl.rope_index import RopeIndexConfig
    from megatron_vrft.testing.sft_run import TINY_VIDEO
    from megatron_vrft.trainer.data import SFTItems

    tok = build_tiny_tokenizer()
    ids = VisionTokenIds.from_tokenizer(tok)
    samples, _ = load_samples(root / "llava_conv/sft.json", "llava_conv", root / "videos", video_options=TINY_VIDEO)
    rope = RopeIndexConfig(image_token_id=ids.image_pad, video_token_id=ids.video_pad)
    return SFTItems(SampleDataset(samples, tok, rope), pixel_dtype), ids.pad


def _worker(rank, root):
    """Runs the three layouts in turn (one spawn); returns {(tp, pp): {"decodes", "steps"}}."""
    from megatron.core import parallel_state as ps

    from megatron_vrft.runtime import destroy_distributed, init_distributed
    from megatron_vrft.trainer.data import StepStream, replica_layout

    dataset, pad = _dataset(root)
    out = {}
    try:
        for tp, pp in LAYOUTS:
            info = init_distributed(tp, pp, seed=0)
            stream = StepStream(dataset, replica_layout(), local_batch=GLOBAL_BATCH // info.dp, epochs=1, seed=3,
                                shuffle=False, pack_tokens=BUDGET, pad_id=pad)
            steps = []
            while (batch := stream.next_batch()) is not None:
                steps.append(batch)
            out[(tp, pp)] = {"decodes": stream.stream is not None, "steps": steps}
            ps.destroy_model_parallel()
    finally:
        destroy_distributed()
    return out


LAYOUTS = [(2, 1), (1, 2), (1, 1)]


def _ids(batch) -> list[str]:
    return [i for m in batch.micro_batches for i in m.sample_ids]


def _dp_change_worker(rank, root):
    """DP=2 (one step, its state, then the rest) -> DP=1 at TP=2 resumed from that state."""
    from megatron.core import parallel_state as ps

    from megatron_vrft.runtime import destroy_distributed, init_distributed
    from megatron_vrft.trainer.data import StepStream, replica_layout

    dataset, pad = _dataset(root)
    out = {}
    kw = dict(epochs=1, seed=3, shuffle=False, micro_batch_size=1, pad_id=pad)
    try:
        init_distributed(1, 1, seed=0)
        stream = StepStream(dataset, replica_layout(), local_batch=GLOBAL_BATCH // 2, **kw)
        steps = [stream.next_batch()]
        out["state"] = stream.state_dict()
        while (batch := stream.next_batch()) is not None:
            steps.append(batch)
        out["dp2"] = [_ids(b) for b in steps]
        out["dp2_rank"] = ps.get_data_parallel_rank()
        ps.destroy_model_parallel()
        init_distributed(2, 1, seed=0)
        stream = StepStream(dataset, replica_layout(), local_batch=GLOBAL_BATCH, **kw)
        stream.load_state_dict(out["state"])
        out["dp1_state"] = stream.state_dict()
        out["dp1"] = []
        while (batch := stream.next_batch()) is not None:
            out["dp1"].append(_ids(batch))
        ps.destroy_model_parallel()
    finally:
        destroy_distributed()
    return out


@pytest.fixture(scope="module")
def runs(root):
    r0, r1 = run_distributed(_worker, 2, (root,), timeout=300)
    return {layout: (r0[layout], r1[layout]) for layout in LAYOUTS}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from megatron_vrft.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("sft_data")
    make_synthetic(root, ("llava_conv",), 12, with_bad=True)
    # 12 good samples with the truncated video second (DP rank 1's first sample); the records
    # that fail at load time are dropped.
    path = root / "llava_conv/sft.json"
    records = json.loads(path.read_text())
    good = [r for r in records if r.get("id")]
    truncated = next(r for r in records if r.get("video") == "truncated.mp4")
    path.write_text(json.dumps([good[0], truncated, *good[1:]]))
    return root


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def test_tp_ranks_decode_once_and_share_the_batch(runs):
    r0, r1 = runs[(2, 1)]
    assert r0["decodes"] and not r1["decodes"]
    assert len(r0["steps"]) == len(r1["steps"]) > 0
    for a, b in zip(r0["steps"], r1["steps"]):
        for ma, mb in zip(a.micro_batches, b.micro_batches, strict=True):
            assert ma.sample_ids == mb.sample_ids
            for f in ("input_ids", "position_ids", "labels", "loss_mask", "pixel_values_videos", "video_grid_thw"):
                assert _same(getattr(ma, f), getattr(mb, f)), f
            assert ma.pixel_values_videos is not None


def test_later_pipeline_stages_get_positions_but_no_pixels(runs):
    r0, r1 = runs[(1, 2)]
    assert r0["decodes"] and not r1["decodes"]
    for a, b in zip(r0["steps"], r1["steps"], strict=True):
        for ma, mb in zip(a.micro_batches, b.micro_batches, strict=True):
            assert torch.equal(ma.position_ids, mb.position_ids) and torch.equal(ma.labels, mb.labels)
            assert ma.pixel_values_videos is not None and mb.pixel_values_videos is None


def test_dp_ranks_take_disjoint_full_steps_with_equal_micro_batch_counts(runs):
    from megatron_vrft.data.packing import plan_micro_batches

    r0, r1 = runs[(1, 1)]
    assert r0["decodes"] and r1["decodes"]
    # rank 1 holds 5 usable samples (one skipped): its third step cannot fill, so both stop after 2
    assert len(r0["steps"]) == len(r1["steps"]) == 2
    assert r0["steps"][0].samples_skipped == r1["steps"][0].samples_skipped == 1
    ids0 = [i for s in r0["steps"] for m in s.micro_batches for i in m.sample_ids]
    ids1 = [i for s in r1["steps"] for m in s.micro_batches for i in m.sample_ids]
    assert not set(ids0) & set(ids1)
    for a, b in zip(r0["steps"], r1["steps"]):
        assert len(a.micro_batches) == len(b.micro_batches)
        assert sum(len(m.sample_ids) for m in a.micro_batches) == GLOBAL_BATCH // 2
        assert a.num_samples == b.num_samples == GLOBAL_BATCH
    # packed alone, the ranks would have run different numbers of micro-batches at some step
    alone = [[len(plan_micro_batches([n for m in s.micro_batches for n in m.seq_lens], BUDGET)) for s in r["steps"]]
             for r in (r0, r1)]
    assert alone[0] != alone[1], alone


def test_resume_at_another_dp_size_continues_from_the_global_position(root):
    r0, r1 = run_distributed(_dp_change_worker, 2, (root,), timeout=300)
    assert r0["state"] == r1["state"]  # one DP-independent state on every rank (rank 0's is saved)
    state = r0["state"]
    # shuffle off, 13 samples (index 1 = the truncated video), 12 dealt: rank 0 reads 0, 2, 4, ...,
    # rank 1 reads 1 (skipped), 3, 5, ...; after step 1 rank 0 is at global 4, rank 1 at 7 (it
    # refilled with 5): everything below 4 is consumed or skipped, 5 is in flight.
    assert (state["epoch"], state["position"], state["world_size"]) == (0, 4, 2)
    assert state["ranks"] == [[0, 2, 0], [0, 3, 0]]
    names = [s.id for s in _dataset(root)[0].samples]
    assert r0["dp1"] == r1["dp1"]  # TP ranks of the one replica: the same steps
    # DP=1 re-deals the epoch from global position 4, in the epoch's order (the dataset index is the
    # permutation index: shuffle off), in full steps of 4 until 1 is left
    assert r0["dp1"] == [[names[i] for i in range(4, 8)], [names[i] for i in range(8, 12)]]
    assert r0["dp1_state"]["position"] == 4 and r0["dp1_state"]["world_size"] == 1
    # the uninterrupted DP=2 run's next step ({4, 6} and {7, 9}) is all in the resumed run; the
    # resumed one reads in-flight 5 again (rank 1 had already trained on it) and nothing is lost
    assert sorted(r0["dp2"][1] + r1["dp2"][1]) == sorted(names[i] for i in (4, 6, 7, 9))
    dp1_read = {i for step in r0["dp1"] for i in step}
    assert set(r0["dp2"][1] + r1["dp2"][1]) <= dp1_read and names[5] in r1["dp2"][0]


def test_sft_items_ship_no_frames_and_the_model_dtype(root):
    dataset, _ = _dataset(root, torch.bfloat16)
    item = dataset[(0, 0)]
    assert item.ok and item.sample is None
    assert item.sequence.pixel_values_videos.dtype == torch.bfloat16
    full = dataset.inner[(0, 0)]
    assert torch.equal(item.sequence.pixel_values_videos, full.sequence.pixel_values_videos.to(torch.bfloat16))

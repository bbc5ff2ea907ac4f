"""`trainer.grpo_data.build_rollout`: the step's completions as packed micro-batches and mini-batches."""

import torch

from megatron_vrft.algos.logprobs import packed_logprobs
from megatron_vrft.data.packing import SequenceItem
from megatron_vrft.models.qwen2_5_vl.vision_reuse import distinct_media
from megatron_vrft.rollout.base import Completion
from megatron_vrft.trainer.grpo_data import build_rollout

PAD = 0


def _prompt(i: int, n: int) -> SequenceItem:
    ids = torch.arange(10, 10 + n)
    return SequenceItem(sample_id=f"p{i}", input_ids=ids, target_mask=torch.zeros(n, dtype=torch.bool),
                        position_ids=torch.arange(n).expand(3, -1).clone(), pixel_values=torch.randn(4, 8),
                        image_grid_thw=torch.tensor([[1, 2, 2]]), prompt_len=n)


def _completion(c: int, seed: int) -> Completion:
    g = torch.Generator().manual_seed(seed)
    return Completion(torch.randint(30, 90, (c,), generator=g), -torch.rand(c, generator=g), "x" * c, "length")


def _case(lengths, updates, pack_tokens=0, micro_batch_size=8):
    prompts = [_prompt(0, 7), _prompt(1, 5)]
    groups = [[_completion(c, 10 * p + k) for k, c in enumerate(row)] for p, row in enumerate(lengths)]
    return prompts, groups, build_rollout(prompts, groups, updates=updates, pack_tokens=pack_tokens,
                                          micro_batch_size=micro_batch_size, pad_id=PAD)


def test_rows_minibatches_and_logprob_layout():
    prompts, groups, rollout = _case([[3, 0, 5], [1, 4, 2]], updates=2)
    flat = [c for g in groups for c in g]
    assert rollout.completion_lens.tolist() == [3, 0, 5, 1, 4, 2]
    # two mini-batches of 3 consecutive completions, one micro-batch each (8 sequences allowed)
    assert [[rollout.micro[i].rows for i in mb] for mb in rollout.minibatches] == [[[0, 1, 2]], [[3, 4, 5]]]
    for mb in rollout.micro:
        assert mb.packed.pixel_values is None  # pixels only through the media path
        logits = torch.randn(1, mb.packed.num_tokens, 96)
        logp, _, mask = packed_logprobs(logits, mb.packed)
        assert mask.shape == logp.shape == mb.rollout_logp.shape
        for i, r in enumerate(mb.rows):
            c = len(flat[r])
            assert mask[i].sum() == c  # one loss position per completion token, the empty one has none
            assert torch.equal(mb.rollout_logp[i, :c], flat[r].logprobs)
            # the position before each completion token predicts it
            targets = mb.packed.labels[0, mb.packed.loss_mask[0].nonzero().squeeze(1)].tolist()
            start = int(mask[:i].sum())
            assert flat[r].token_ids.tolist() == targets[start: start + c]


def test_completions_of_a_prompt_share_one_vision_pass():
    prompts, _, rollout = _case([[3, 2, 5], [1, 4, 2]], updates=1)
    (mb,) = rollout.micro
    media = distinct_media(mb.seqs)
    assert media.image_grid_thw.tolist() == [[1, 2, 2], [1, 2, 2]]  # 2 distinct images for 6 sequences
    assert media.image_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(media.pixel_values, torch.cat([prompts[0].pixel_values, prompts[1].pixel_values]))


def test_token_budget_packs_in_order():
    _, _, rollout = _case([[3, 2, 5], [1, 4, 2]], updates=1, pack_tokens=25)
    rows = [mb.rows for mb in rollout.micro]
    assert [r for mb in rows for r in mb] == list(range(6)) and len(rows) > 1
    assert all(mb.packed.num_tokens <= 25 for mb in rollout.micro)

"""grpo_loss against hand-computed tensors: clipping inactive / active / clip-higher, padded
masks, beta = 0, each aggregation, each KL estimator, gradients."""

import math

import pytest
import torch

from megatron_vrft.algos import grpo_loss, kl_penalty


def _close(x, want, atol=1e-6):
    x = float(x.detach()) if torch.is_tensor(x) else float(x)
    assert x == pytest.approx(want, abs=atol), (x, want)


def _inputs(ratio, logp=None):
    """logp (a leaf with grad) and old_logp such that exp(logp - old_logp) == ratio."""
    ratio = torch.tensor(ratio, dtype=torch.float64)
    logp = torch.full_like(ratio, -1.0) if logp is None else torch.tensor(logp, dtype=torch.float64)
    logp.requires_grad_(True)
    return logp, logp.detach() - ratio.log()


# Clipping inactive: every ratio in [0.8, 1.2], so each token's term is -rho * A.
INACTIVE = dict(ratio=[[1.1, 0.9, 1.0], [1.05, 0.95, 1.0]], adv=[1.0, -2.0], mask=[[1, 1, 0], [1, 1, 1]])
# per token -rho*A: row 0 (-1.1, -0.9, [masked]), row 1 (2.1, 1.9, 2.0)
INACTIVE_LOSS = {"token_mean": 4.0 / 5, "sequence_mean": (-2.0 / 2 + 6.0 / 3) / 2, "seq_mean_token_sum": (-2.0 + 6.0) / 2}


@pytest.mark.parametrize("agg", list(INACTIVE_LOSS))
def test_clipping_inactive_each_aggregation(agg):
    logp, old = _inputs(INACTIVE["ratio"])
    adv, mask = torch.tensor(INACTIVE["adv"]), torch.tensor(INACTIVE["mask"])
    loss, m = grpo_loss(logp, old, None, adv, mask, beta=0.0, loss_agg=agg)
    _close(loss, INACTIVE_LOSS[agg])
    assert float(m["clip_frac"]) == 0.0 and float(m["num_tokens"]) == 5
    loss.backward()
    # d(-rho A)/dlogp = -rho A, then the aggregation's weights
    rho, a = torch.tensor(INACTIVE["ratio"], dtype=torch.float64), torch.tensor(INACTIVE["adv"], dtype=torch.float64)
    weight = {"token_mean": torch.full((2, 1), 1 / 5), "sequence_mean": torch.tensor([[1 / 4], [1 / 6]]),
              "seq_mean_token_sum": torch.full((2, 1), 1 / 2)}[agg].double()
    torch.testing.assert_close(logp.grad, -rho * a[:, None] * mask * weight)


CLIP_RATIO = [[1.5, 0.5, 1.0], [1.5, 0.5, 1.0]]


def test_clipping_active():
    logp, old = _inputs(CLIP_RATIO)
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    loss, m = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, beta=0.0)
    # A=+1: max(-1.5, -1.2) = -1.2 (clipped high), max(-0.5, -0.8) = -0.5, -1.0
    # A=-1: max(1.5, 1.2) = 1.5, max(0.5, 0.8) = 0.8 (clipped low), 1.0
    _close(loss, (-1.2 - 0.5 - 1.0 + 1.5 + 0.8 + 1.0) / 6)
    _close(m["clip_frac"], 2 / 6)
    _close(m["clip_frac_low"], 1 / 6)
    _close(m["clip_frac_high"], 1 / 6)
    _close(m["ratio"], sum(CLIP_RATIO[0]) * 2 / 6)
    loss.backward()
    # clipped tokens get no gradient; the others -rho*A/6
    want = torch.tensor([[0.0, -0.5, -1.0], [1.5, 0.0, 1.0]], dtype=torch.float64) / 6
    torch.testing.assert_close(logp.grad, want)


def test_clip_higher():
    logp, old = _inputs(CLIP_RATIO)
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    loss, m = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, clip_eps_high=0.6, beta=0.0)
    # rho = 1.5 < 1 + 0.6 is no longer clipped: -1.5 instead of -1.2
    _close(loss, (-1.5 - 0.5 - 1.0 + 1.5 + 0.8 + 1.0) / 6)
    _close(m["clip_frac_high"], 0.0)
    _close(m["clip_frac_low"], 1 / 6)


def _k(d, estimator):
    return {"k1": d, "k2": 0.5 * d * d, "k3": math.exp(-d) + d - 1}[estimator]


def _dk(d, estimator):
    return {"k1": 1.0, "k2": d, "k3": 1 - math.exp(-d)}[estimator]


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators(estimator):
    d = [0.5, -0.5, 1.0]  # logp - ref_logp
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    ref = logp.detach() - torch.tensor([d], dtype=torch.float64)
    # rho = 1 and A = 0: the policy term is 0, the loss is beta * mean KL
    loss, m = grpo_loss(logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 3), beta=0.5, kl_estimator=estimator)
    want_kl = sum(_k(x, estimator) for x in d) / 3
    _close(m["kl"], want_kl)
    _close(loss, 0.5 * want_kl)
    loss.backward()
    # the policy term still contributes d(-rho A)/dlogp = 0 since A = 0
    torch.testing.assert_close(logp.grad, torch.tensor([[0.5 * _dk(x, estimator) / 3 for x in d]], dtype=torch.float64))
    assert kl_penalty(torch.zeros(1), torch.zeros(1), estimator).item() == 0.0


def test_policy_plus_kl():
    logp, old = _inputs(INACTIVE["ratio"])
    ref = logp.detach() - 0.5  # d = 0.5 on every token
    adv, mask = torch.tensor(INACTIVE["adv"]), torch.tensor(INACTIVE["mask"])
    loss, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.04, kl_estimator="k3")
    _close(loss, INACTIVE_LOSS["token_mean"] + 0.04 * (math.exp(-0.5) + 0.5 - 1))


def test_beta_zero_needs_no_reference_and_ignores_it():
    logp, old = _inputs(INACTIVE["ratio"])
    adv, mask = torch.tensor(INACTIVE["adv"]), torch.tensor(INACTIVE["mask"])
    loss0, m0 = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    assert "kl" not in m0
    loss1, m1 = grpo_loss(logp, old, logp.detach() - 3.0, adv, mask, beta=0.0)
    assert loss0.item() == loss1.item() and float(m1["kl"]) > 0  # reported, not in the loss
    with pytest.raises(ValueError, match="beta > 0 needs ref_logp"):
        grpo_loss(logp, old, None, adv, mask, beta=0.04)


@pytest.mark.parametrize("agg", list(INACTIVE_LOSS))
def test_padding_values_and_empty_rows_do_not_matter(agg):
    ratio = [row + [1.0] for row in INACTIVE["ratio"]] + [[1.0] * 4]  # one more column, one empty row
    logp, old = _inputs(ratio)
    garbage = torch.tensor([[0, 0, 1e3, -1e3], [0, 0, 0, 50.0], [7.0, -7.0, 1e3, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    old = old - garbage * (1 - mask)  # huge (clamped) log ratios in the padding only
    adv = torch.tensor(INACTIVE["adv"] + [5.0])
    ref = logp.detach() + garbage * (1 - mask)
    loss, m = grpo_loss(logp, old, ref, adv, mask, beta=0.0, loss_agg=agg)
    assert torch.isfinite(loss)
    _close(loss, INACTIVE_LOSS[agg])
    assert math.isfinite(float(m["kl"]))
    loss.backward()
    assert torch.isfinite(logp.grad).all() and (logp.grad[mask == 0] == 0).all()


def test_equal_rewards_give_zero_loss_and_grad():
    logp, old = _inputs(CLIP_RATIO)
    loss, _ = grpo_loss(logp, old, None, torch.zeros(2), torch.ones(2, 3), beta=0.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros_like(logp.grad))


def test_all_padding_is_zero_not_nan():
    logp, old = _inputs([[1.0, 1.0]])
    for agg in INACTIVE_LOSS:
        loss, m = grpo_loss(logp, old, None, torch.ones(1), torch.zeros(1, 2), beta=0.0, loss_agg=agg)
        assert loss.item() == 0.0 and float(m["clip_frac"]) == 0.0


@pytest.mark.parametrize("agg", list(INACTIVE_LOSS))
def test_denominator_makes_micro_batches_add_up(agg):
    logp, old = _inputs(INACTIVE["ratio"])
    adv, mask = torch.tensor(INACTIVE["adv"]), torch.tensor(INACTIVE["mask"])
    full, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0, loss_agg=agg)
    count = 5 if agg == "token_mean" else 2
    parts = [grpo_loss(logp[i:i + 1], old[i:i + 1], None, adv[i:i + 1], mask[i:i + 1], beta=0.0,
                       loss_agg=agg, denominator=count)[0] for i in range(2)]
    _close(sum(parts), full.item())


def test_entropy_metric_and_shape_errors():
    logp, old = _inputs(INACTIVE["ratio"])
    adv, mask = torch.tensor(INACTIVE["adv"]), torch.tensor(INACTIVE["mask"])
    ent = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    _, m = grpo_loss(logp, old, None, adv, mask, beta=0.0, entropy=ent)
    _close(m["entropy"], 15.0 / 5)
    with pytest.raises(ValueError, match="advantages must be"):
        grpo_loss(logp, old, None, adv[:1], mask, beta=0.0)
    with pytest.raises(ValueError, match="mask has shape"):
        grpo_loss(logp, old, None, adv, mask[:, :2], beta=0.0)
    with pytest.raises(ValueError, match="unknown kl_estimator"):
        grpo_loss(logp, old, None, adv, mask, beta=0.0, kl_estimator="k4")
    with pytest.raises(ValueError, match="unknown loss_agg"):
        grpo_loss(logp, old, None, adv, mask, beta=0.0, loss_agg="mean")

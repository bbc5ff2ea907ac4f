"""Helpers shared by the rollout tests."""

import torch

EOS = 258  # <|im_end|> of the tiny tokenizer
IMAGE_PAD = 268


def max_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| (0 for empty completions, which a sampled media placeholder can produce)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() if a.numel() else 0.0


def perturbed(state: dict, seed: int, scale: float = 0.05, skip_prefix: str | None = None) -> dict:
    """A simulated training step: every floating tensor + scale * std * noise (seeded, deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if not t.is_floating_point() or (skip_prefix and name.startswith(skip_prefix)):
            out[name] = t.clone()
            continue
        noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        out[name] = t + scale * t.std().clamp_min(0.05) * noise
    return out


@torch.no_grad()
def first_token_lm_head(hf_engine, item, token: int = EOS) -> torch.Tensor:
    """lm_head.weight whose ``token`` row is chosen so that its logit after ``item``'s last prompt
    token is 1000 (``w = 1000 h / |h|^2``): ``token`` gets all the probability at the first step."""
    from megatron_vrft.rollout.hf import _media_kwargs

    seen = []
    hook = hf_engine.model.lm_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0][0, -1].clone()))
    try:
        seq = item.sequence
        hf_engine.model(input_ids=seq.input_ids[None], position_ids=seq.position_ids[:, None], **_media_kwargs(seq))
    finally:
        hook.remove()
    h = seen[0]
    w = hf_engine.state_dict()["lm_head.weight"].clone()
    w[token] = 1000.0 * h / h.norm() ** 2
    return w

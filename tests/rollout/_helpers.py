"""Helpers shared by the rollout tests."""

import torch

EOS = 258  # <|im_end|> of the tiny tokenizer


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
def eos_first_lm_head(hf_engine, item) -> torch.Tensor:
    """lm_head.weight whose EOS row is chosen so that EOS's logit after ``item``'s last prompt token
    is 1000 (``w = 1000 h / |h|^2``): EOS gets all the probability at that prompt's first step."""
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
    w[EOS] = 1000.0 * h / h.norm() ** 2
    return w

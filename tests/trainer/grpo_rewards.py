"""Plugin rewards for the GRPO tests (``grpo.rewards[i].name: tests.trainer.grpo_rewards:<fn>``)."""


def letter_share(completions, **columns):
    """Share of ASCII letters in the text: differs between a random model's completions, so the group
    advantages are not all 0 and the update moves the parameters."""
    return [sum(ch.isascii() and ch.isalpha() for ch in c) / max(len(c), 1) for c in completions]


def raises_on_odd(completions, **columns):
    """Raises for a batch holding any completion of odd length (then for each such sample alone):
    the wiring must give those samples None, count them, and go on."""
    if any(len(c) % 2 for c in completions):
        raise ValueError("odd-length completion")
    return [1.0 for _ in completions]

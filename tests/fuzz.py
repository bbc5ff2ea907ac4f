"""Shared pieces of the property-based (hypothesis) tests: a JSON-value strategy biased towards what
parsers trip on, and a linear-time check that holds on a loaded machine. Needs the ``test`` extra
(hypothesis), hence under tests/ and not in the installed package."""

from __future__ import annotations

import gc
import time

from hypothesis import strategies as st

__all__ = ["TRICKY", "JSON", "scales_linearly"]

# JSON leaves biased towards what parsers trip on: tags, placeholders, times, paths, huge/odd numbers
TRICKY = st.sampled_from(["", " ", "<video>", "<image>", "<answer>", "</answer>", "<think>", "00:01", "1:02:03",
                          "01:10-end", "../../etc/passwd", "/etc/passwd", "file://x.mp4", "A.", "(B)", "nan", "inf",
                          "-1", "1e308", "Normal", "Abnormal", "\x00", "\n", "gpt", "human", "assistant"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), TRICKY)
JSON = st.recursive(LEAVES, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8) | TRICKY,
                                                                                         kids, max_size=4),
                    max_leaves=12)


def scales_linearly(fn, make, n: int, slack: float = 0.05) -> tuple[bool, float, float]:
    """Whether ``fn(make(10 n))`` takes < 30x ``fn(make(n))`` (+ ``slack`` s for a loaded machine):
    best of up to 3 tries each, the collector off while timing. Returns (ok, small s, large s)."""

    def once(x):
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn(x)
            return time.perf_counter() - t0
        finally:
            gc.enable()

    small_in, large_in = make(n), make(10 * n)
    small, large = min(once(small_in) for _ in range(3)), float("inf")
    for _ in range(3):
        large = min(large, once(large_in))
        if large < 30 * small + slack:
            return True, small, large
    return False, small, large

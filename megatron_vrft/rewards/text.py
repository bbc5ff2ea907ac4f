"""Linear-time extraction of ``<tag>…</tag>`` blocks and of whole-response tag templates.

Rewards run on model output, which can be long and adversarial (``'<answer>' * 20000``, unbalanced
or nested tags). The seeds' regexes (``<think>.*?</think>\\s*<answer>.*?</answer>`` with
``re.fullmatch``) backtrack over every ``</think>`` candidate and go quadratic on such input, so
everything here is built on ``str.find``/``str.rfind``, which scan each character a bounded number
of times.
"""

from __future__ import annotations

from typing import Sequence


def open_tag(tag: str) -> str:
    return f"<{tag}>"


def close_tag(tag: str) -> str:
    return f"</{tag}>"


def last_block(text: str, tag: str) -> str | None:
    """Content of the last complete ``<tag>…</tag>`` block, or None when there is none.

    "Last" follows Time-R1 / RA-RFT (the final answer wins). The opening tag is the nearest one
    before the last closing tag, so ``<answer>a<answer>b</answer>`` gives ``b``.
    """
    end = text.rfind(close_tag(tag))
    if end < 0:
        return None
    start = text.rfind(open_tag(tag), 0, end)
    if start < 0:
        return None
    return text[start + len(open_tag(tag)) : end]


def match_template(text: str, tags: Sequence[str]) -> list[str] | None:
    """Contents of ``<t0>c0</t0> <t1>c1</t1> …`` when ``text`` is exactly that, else None.

    Rules (the seeds' ``re.fullmatch`` templates, made unambiguous):
    - leading/trailing whitespace of ``text`` is ignored; only whitespace may separate blocks;
    - each tag appears once, in order; a content holding any of the template's own opening or
      closing tags (nesting, duplicates) does not match.
    Contents are returned unstripped.
    """
    body = text.strip()
    forbidden = [open_tag(t) for t in tags] + [close_tag(t) for t in tags]
    pos = 0
    contents: list[str] = []
    for i, tag in enumerate(tags):
        if i:
            # skip the whitespace between blocks (str.lstrip is linear in what it skips)
            pos = len(body) - len(body[pos:].lstrip())
        start_tag, end_tag = open_tag(tag), close_tag(tag)
        if not body.startswith(start_tag, pos):
            return None
        content_start = pos + len(start_tag)
        end = body.find(end_tag, content_start)
        if end < 0:
            return None
        content = body[content_start:end]
        if any(f in content for f in forbidden):
            return None
        contents.append(content)
        pos = end + len(end_tag)
    return contents if pos == len(body) else None

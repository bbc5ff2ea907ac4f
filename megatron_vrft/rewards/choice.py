"""``mc_accuracy``: multiple-choice accuracy (Robo2VLM, Video-R2/Open-R1-Video MCQ).

The predicted answer is the last ``<answer>`` block, or the whole completion when it has none (SFT
targets such as RLinf's ``"B. text"`` carry no tags). It may be
- a letter: ``B``, ``B.``, ``(B)``, ``B)``;
- a letter and the choice text: ``B. a phone``, ``(B) a phone``, ``B: a phone``;
- the choice text alone: ``a phone``.
Texts compare case-insensitively with whitespace collapsed and a trailing period dropped. A letter
whose text names another choice (or no choice) is wrong.

The gold ``answer`` column holds a letter, a 0-based index, or the choice text.
"""

from __future__ import annotations

import numbers
import re

from .registry import RewardInputError, column, register_reward
from .text import last_block

# Anchored at the start with bounded pieces: constant work whatever the input length.
_LETTER_ONLY = re.compile(r"\(?([A-Za-z])\)?[.):]?")
_LETTER_PREFIX = re.compile(r"\(?([A-Za-z])\s*[.):]\s*")


def _norm(text: str) -> str:
    return " ".join(text.split()).lower().rstrip(".").rstrip()


def parse_choice(text: str) -> tuple[int | None, str | None]:
    """(letter index or None, choice text or None) stated by ``text``."""
    s = text.strip()
    if len(s) <= 4:
        m = _LETTER_ONLY.fullmatch(s)
        if m:
            return ord(m.group(1).upper()) - ord("A"), None
    m = _LETTER_PREFIX.match(s)
    if m and m.end() < len(s):
        return ord(m.group(1).upper()) - ord("A"), s[m.end() :]
    return None, s


def _text_index(text: str, choices: list[str]) -> int | None:
    target = _norm(text)
    for i, c in enumerate(choices):
        if _norm(c) == target:
            return i
    return None


def _gold_index(answer: object, choices: list[str], index: int) -> int:
    where = f"reward 'mc_accuracy': row {index}"
    if isinstance(answer, bool):
        raise RewardInputError(f"{where}: answer is a bool ({answer!r}); give a letter, index or text")
    if isinstance(answer, numbers.Integral):  # also numpy integers from parquet columns
        if not 0 <= answer < len(choices):
            raise RewardInputError(f"{where}: answer index {answer} is outside the {len(choices)} choices")
        return int(answer)
    if not isinstance(answer, str):
        raise RewardInputError(f"{where}: answer must be a letter, 0-based index or choice text, got {answer!r}")
    block = last_block(answer, "answer")
    letter, text = parse_choice(block if block is not None else answer)
    if letter is not None and 0 <= letter < len(choices):
        if text is None or _norm(text) == _norm(choices[letter]):
            return letter
        raise RewardInputError(f"{where}: answer {answer!r} names letter {chr(65 + letter)} but another text")
    found = _text_index(answer if block is None else block, choices)
    if found is None:
        raise RewardInputError(f"{where}: answer {answer!r} matches no choice of {choices!r}")
    return found


def _choices(value: object, index: int) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        raise RewardInputError(
            f"reward 'mc_accuracy': choices of row {index} must be a list of str (the dataset adapter "
            f"parses string-encoded lists), got {value!r:.80}"
        )
    if not 1 <= len(value) <= 26:
        raise RewardInputError(f"reward 'mc_accuracy': row {index} has {len(value)} choices; letters allow 1..26")
    return list(value)


def is_correct(prediction: str, gold: int, choices: list[str]) -> bool:
    """Whether the stated answer (letter, letter + text, or text) is choice ``gold``."""
    letter, text = parse_choice(prediction)
    if letter is not None:
        return letter == gold and (text is None or _norm(text) == _norm(choices[gold]))
    return text is not None and _text_index(text, choices) == gold


@register_reward("mc_accuracy")
def mc_accuracy(completions: list[str], **columns) -> list[float | None]:
    """1.0 when the completion picks the gold choice, else 0.0; None for rows without choices.

    columns: ``choices`` (list of str per row), ``answer`` (letter, 0-based index or choice text).
    """
    n = len(completions)
    choices_col = column(columns, "choices", n, "mc_accuracy")
    answers = column(columns, "answer", n, "mc_accuracy")
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        choices = _choices(choices_col[i], i)
        if choices is None or answers[i] is None:
            rewards.append(None)
            continue
        gold = _gold_index(answers[i], choices, i)
        block = last_block(completion, "answer")
        prediction = block if block is not None else completion
        rewards.append(1.0 if is_correct(prediction, gold, choices) else 0.0)
    return rewards

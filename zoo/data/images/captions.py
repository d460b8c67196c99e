"""Captions of MNIST digits for the text-to-image data: ``caption(digit, rng)`` draws one of :data:`TEMPLATES`
("a handwritten digit seven", "the number 7", ...), ``prompt(digit)`` is the canonical one; :data:`VOCAB_WORDS` are
every word they (and the style fine-tuning captions) use. The tokenizer over these words is
:func:`zoo.diffusion.captions.word_tokenizer`.
"""
from __future__ import annotations

import random
from typing import Sequence

__all__ = ["DIGIT_WORDS", "TEMPLATES", "STYLE_WORDS", "VOCAB_WORDS", "caption", "prompt"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: caption templates: ``{w}`` the digit's word, ``{d}`` its numeral
TEMPLATES = (
    "a handwritten digit {w}",
    "the number {d}",
    "a drawing of the digit {w}",
    "handwritten {w}",
    "the digit {d}",
    "a picture of the number {w}",
    "a scanned handwritten {d}",
    "digit {w}",
)
#: words of the style fine-tuning captions (not used in pre-training). In the vocabulary; all but "background"
#: become one token (the merges of "grass"/"gravel" split it first) — the shipped tokenizer has this vocabulary
STYLE_WORDS = ("in", "style", "brick", "grass", "gravel", "texture", "with", "on", "coloured", "background")
VOCAB_WORDS = tuple(dict.fromkeys(
    [w for t in TEMPLATES for w in t.replace("{w}", "").replace("{d}", "").split()]
    + list(DIGIT_WORDS) + [str(d) for d in range(10)] + list(STYLE_WORDS)
))


def prompt(digit: int) -> str:
    """The canonical prompt of ``digit`` (0..9): ``"a handwritten digit seven"``."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be 0..9, got {digit}")
    return TEMPLATES[0].format(w=DIGIT_WORDS[int(digit)], d=int(digit))


def caption(digit: int, rng: random.Random | None = None, templates: Sequence[str] = TEMPLATES) -> str:
    """One caption of ``digit`` from a random template (``rng``; ``None``: the canonical :func:`prompt`)."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be 0..9, got {digit}")
    t = templates[0] if rng is None else rng.choice(list(templates))
    return t.format(w=DIGIT_WORDS[int(digit)], d=int(digit))

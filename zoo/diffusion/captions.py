"""Captions for the MNIST text-to-image model and a word-level CLIP tokenizer over their words.

``caption(digit, rng)`` draws one of :data:`TEMPLATES` ("a handwritten digit seven", "the number 7", ...) for a
label 0..9; ``prompt(digit)`` is the canonical one ("a handwritten digit seven"). ``word_tokenizer()`` is a real
``transformers.CLIPTokenizer`` (BPE) whose merges rebuild every word of :data:`VOCAB_WORDS` into one token, so a
caption is a handful of word tokens (``"a handwritten digit seven"`` -> 4 tokens + start/end); other words still
split into single characters (the character tokens of :func:`zoo.diffusion.tiny.tiny_tokenizer` are kept), so any
prompt tokenizes. It is saved with the pipeline (``tokenizer/``: ``vocab.json`` + ``merges.txt``) and loads with
``CLIPTokenizer.from_pretrained`` like any Stable Diffusion tokenizer. The caption texts live with the data
(:mod:`zoo.data.images.captions`) and are re-exported here.
"""
from __future__ import annotations

import string
from typing import Any, Sequence

from zoo.data.images.captions import DIGIT_WORDS, STYLE_WORDS, TEMPLATES, VOCAB_WORDS, caption, prompt

__all__ = ["DIGIT_WORDS", "TEMPLATES", "STYLE_WORDS", "VOCAB_WORDS", "caption", "prompt", "word_tokenizer",
           "MAX_LENGTH"]

MAX_LENGTH = 16


def _vocab_and_merges(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab: dict[str, int] = {}
    for tok in ["<|startoftext|>", "<|endoftext|>", "<unk>"]:
        vocab[tok] = len(vocab)
    for ch in string.ascii_lowercase + string.digits + ",.!?'-":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        cur = parts[0]
        for nxt in parts[1:]:  # left-to-right merges: s+e -> se, se+v -> sev, ..., seve+n</w> -> seven</w>
            pair = (cur, nxt)
            cur = cur + nxt
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            vocab.setdefault(cur, len(vocab))
    return vocab, merges


def word_tokenizer(words: Sequence[str] = VOCAB_WORDS, model_max_length: int = MAX_LENGTH) -> Any:
    """A ``CLIPTokenizer`` turning each of ``words`` into one token (other words: one token per character).

    Built in memory (no download): the vocabulary holds the special tokens, the character tokens and every
    prefix of every word; the merges join a word left to right.
    """
    from zoo.diffusion.pipeline import require_diffusers

    require_diffusers()
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges(words)
    try:  # transformers >= 5
        return CLIPTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", model_max_length=model_max_length)
    except TypeError:  # transformers 4.x: files
        import json
        import tempfile
        from pathlib import Path

        tmp = Path(tempfile.mkdtemp(prefix="zoo_wtok_"))
        (tmp / "vocab.json").write_text(json.dumps(vocab))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), unk_token="<unk>",
                             model_max_length=model_max_length)

"""Which generated responses are not worth training on. Besides degenerate output, the checks
that self-alignment work (Self-Instruct, Dromedary) applies to a model's own data: answers that
copy an in-context example instead of answering, that echo the prompt, or that loop."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from jsonargparse.typing import NonNegativeInt

from soft_lightning.utils.config_types import ShareBelowOne

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


@dataclass
class FilterSettings:
    """Thresholds of the drop reasons (bootstrap.filters); a share of 0 turns a check off.

    Attributes:
        min_chars: shorter responses are `too_short`.
        max_example_overlap: `copies_example` when at least this share of the response's word
            8-grams appear in one of the in-context examples shown with its prompt.
        max_prompt_overlap: `echoes_prompt` when at least this share of the response's word
            4-grams appear in the prompt (and the response adds fewer than 8 words of its own).
        max_repeated_sentences: `repeats_sentences` when at least this share of its sentences
            (3+ words) repeat an earlier one.
        truncated: a response cut off at `sampling.max_new_tokens` never ended: `drop` it
            (`truncated`), or `keep` it and train it without an end-of-turn marker, so the model
            is not taught to stop mid-sentence (but is taught to run on: each such round teaches
            it to stop less).
    """

    min_chars: NonNegativeInt = 2
    max_example_overlap: ShareBelowOne = 0.5
    max_prompt_overlap: ShareBelowOne = 0.8
    max_repeated_sentences: ShareBelowOne = 0.3
    truncated: Literal["drop", "keep"] = "drop"


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def overlap(response: list[str], source: list[str], n: int) -> float:
    """Share of the response's word n-grams that also occur in `source` (0 if it has none)."""
    grams = ngrams(response, n)
    if not grams:
        return 0.0
    seen = set(ngrams(source, n))
    return sum(g in seen for g in grams) / len(grams)


def repeated_sentence_share(text: str) -> float:
    sentences = [" ".join(words(s)) for s in _SENTENCE_END.split(text)]
    sentences = [s for s in sentences if s.count(" ") >= 2]
    if len(sentences) < 3:
        return 0.0
    return 1 - len(set(sentences)) / len(sentences)


def drop_reason(response: str, settings: FilterSettings = FilterSettings(), prompt: str = "",
                examples: list[str] = (), finished: bool = True) -> str | None:
    """The first reason `response` (to `prompt`, generated with `examples` shown; `finished`: it
    ended rather than hitting the length cap) is not worth training on, or None: `empty`,
    `truncated`, `too_short`, `repetitive` (word 4-grams mostly repeats: the loop a collapsing
    model falls into), `repeats_sentences`, `copies_example`, `echoes_prompt`."""
    text = response.strip()
    if not text:
        return "empty"
    if not finished and settings.truncated == "drop":
        return "truncated"
    if len(text) < settings.min_chars:
        return "too_short"
    tokens = words(text)
    grams = ngrams(text.split(), 4)
    if len(grams) >= 20 and len(set(grams)) / len(grams) < 0.3:
        return "repetitive"
    if settings.max_repeated_sentences and repeated_sentence_share(text) >= settings.max_repeated_sentences:
        return "repeats_sentences"
    if settings.max_example_overlap and any(
            overlap(tokens, words(example), 8) >= settings.max_example_overlap for example in examples):
        return "copies_example"
    prompt_words = words(prompt)
    if (settings.max_prompt_overlap and len(set(tokens) - set(prompt_words)) < 8
            and overlap(tokens, prompt_words, 4) >= settings.max_prompt_overlap):
        return "echoes_prompt"
    return None

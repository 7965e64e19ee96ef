"""Which generated responses are not worth training on."""

from __future__ import annotations


def drop_reason(response: str, min_chars: int = 2) -> str | None:
    """`empty`, `too_short` or `repetitive` for a degenerate response, None for a usable one.

    Repetitive means a long response whose word 4-grams are mostly repeats: the loop a
    collapsing model falls into.
    """
    text = response.strip()
    if not text:
        return "empty"
    if len(text) < min_chars:
        return "too_short"
    words = text.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    if len(grams) >= 20 and len(set(grams)) / len(grams) < 0.3:
        return "repetitive"
    return None

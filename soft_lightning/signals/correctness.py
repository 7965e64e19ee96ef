"""Is an answer correct, where a prompt has a reference a rule can check? (`reference` in a split's
row; experiments/make_reference_items.py writes them.)

- `number` {value, percent?}: the value appears among the answer's numbers ("15%", "15 percent",
  "$15.00", "1,500"; for a percentage also its fraction, 0.15). List markers ("1." at a line's
  start) are not numbers of the answer.
- `text` {answers, exclusive?}: an accepted answer appears as whole words (any case).
- `date` {month, day}: "April 4", "4 April" or "April 4th".

A shotgun is not correct: an answer that states more than three numbers the prompt does not (or,
for `exclusive` choices such as weekdays, more than one choice the prompt does not name) has not
committed to one. It can be wrong: a right value stated in words ("thirty") is missed.
"""

from __future__ import annotations

import re

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
_MARKER = re.compile(r"^\s*\d+[.)]\s", re.MULTILINE)
_NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])-?\d+(?:\.\d+)?")
MAX_OTHER_NUMBERS = 3


def numbers(text: str) -> list[float]:
    """The numbers a text states (list markers left out)."""
    return [float(n.replace(",", "")) for n in _NUMBER.findall(_MARKER.sub(" ", text))]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def is_correct(answer: str, prompt: str, reference: dict) -> bool:
    """Whether `answer` to `prompt` states the reference (see the module's docstring)."""
    kind = reference["type"]
    if kind == "number":
        stated, given = numbers(answer), numbers(prompt)
        wanted = [reference["value"]] + ([reference["value"] / 100] if reference.get("percent") else [])
        others = {n for n in stated if not any(_close(n, g) for g in given)}
        return len(others) <= MAX_OTHER_NUMBERS and any(_close(n, w) for n in stated for w in wanted)
    text = answer.lower()
    if kind == "text":
        def says(word: str) -> bool:
            return re.search(rf"\b{re.escape(word.lower())}\b", text) is not None

        named = {c for c in reference.get("exclusive", []) if says(c) and c.lower() not in prompt.lower()}
        return len(named) <= 1 and any(says(a) for a in reference["answers"])
    if kind == "date":
        month, day = MONTHS[reference["month"] - 1], reference["day"]
        return re.search(rf"\b{month}\s+{day}(?:st|nd|rd|th)?\b|\b{day}(?:st|nd|rd|th)?\s+(?:of\s+)?{month}\b",
                         text) is not None
    raise ValueError(f"unknown reference type {kind!r}")

"""The `rules` task's prompts with a reference answer a rule can check: arithmetic, percentages,
units and dates from a seeded generator, and facts written for this project (never chosen by
whether any model knows them). A third of each held-out split; each row carries `reference` (what
signals/correctness.py checks) and `reference_answer` (a plain sentence: signals/capability.py
measures how likely each round finds it).

    python experiments/make_reference_items.py     (rewrites the reference rows of both splits)

Re-running gives the same rows: the seed is fixed, and the splits' other rows are kept as they are.
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "soft_lightning" / "assets"
SPLITS = {"validation": ("va", 15, 5, 0), "test": ("te", 22, 8, 1)}  # id tag, generated, facts, seed
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

UNITS = {"m-cm": ("metres", "centimetres", 100, "cm"), "kg-g": ("kilograms", "grams", 1000, "g"),
         "h-min": ("hours", "minutes", 60, "min"), "km-m": ("kilometres", "metres", 1000, "m"),
         "l-ml": ("litres", "millilitres", 1000, "ml")}
# Facts, in our own words; `answers` are the accepted spellings (whole words, any case).
FACTS = [
    ("What is the chemical symbol for gold?", ["Au"], "The chemical symbol for gold is Au."),
    ("Which planet is known as the Red Planet?", ["Mars"], "Mars is known as the Red Planet."),
    ("How many legs does a spider have?", 8, "A spider has 8 legs."),
    ("What is the largest ocean on Earth?", ["Pacific"], "The Pacific is the largest ocean on Earth."),
    ("Who wrote the play Romeo and Juliet?", ["Shakespeare"], "William Shakespeare wrote Romeo and Juliet."),
    ("What gas do plants take in from the air to make sugar?", ["carbon dioxide", "CO2"],
     "Plants take in carbon dioxide to make sugar."),
    ("How many sides does a hexagon have?", 6, "A hexagon has 6 sides."),
    ("What is the capital city of Japan?", ["Tokyo"], "The capital of Japan is Tokyo."),
    ("At what temperature in degrees Celsius does pure water boil at sea level?", 100,
     "Pure water boils at 100 degrees Celsius at sea level."),
    ("Which organ pumps blood around the human body?", ["heart"], "The heart pumps blood around the body."),
    ("What is the hardest natural substance?", ["diamond", "diamonds"], "Diamond is the hardest natural substance."),
    ("How many continents are there on Earth?", 7, "There are 7 continents."),
    ("What is the freezing point of water in degrees Fahrenheit?", 32, "Water freezes at 32 degrees Fahrenheit."),
]


def number(value: float, unit: str = "", percent: bool = False) -> dict:
    return {"type": "number", "value": value, **({"unit": unit} if unit else {}), **({"percent": True} if percent
                                                                                    else {})}


def generated(rng: random.Random) -> tuple[str, dict, str, str]:
    """(prompt, reference, reference answer, category) of one generated item."""
    kind = rng.choice(["percent", "share", "discount", "arithmetic", "speed", "unit", "weekday", "date"])
    if kind == "percent":
        p, n = rng.choice([5, 10, 15, 20, 25, 30, 40, 60, 75]), rng.choice(range(20, 1001, 20))
        value = p * n // 100 if p * n % 100 == 0 else p * n / 100
        return f"What is {p}% of {n}?", number(value), f"{p}% of {n} is {value}.", "math"
    if kind == "share":
        p, n = rng.choice([5, 10, 15, 20, 25, 40, 75]), rng.choice(range(40, 801, 40))
        part = p * n // 100 if p * n % 100 == 0 else p * n / 100
        return (f"What percentage of {n} is {part}?", number(p, percent=True), f"{part} is {p}% of {n}.", "math")
    if kind == "discount":
        price, p = rng.choice(range(20, 401, 10)), rng.choice([10, 20, 25, 50])
        sale = price * (100 - p) / 100
        sale = int(sale) if sale == int(sale) else sale
        return (f"A lamp costs ${price} and is {p}% off. What is the sale price?", number(sale),
                f"The sale price is ${sale}.", "math")
    if kind == "arithmetic":
        a, b = rng.randint(12, 99), rng.randint(3, 19)
        return f"What is {a} multiplied by {b}?", number(a * b), f"{a} multiplied by {b} is {a * b}.", "math"
    if kind == "speed":
        v, h = rng.choice(range(40, 121, 5)), rng.randint(2, 6)
        return (f"A train travels at {v} km per hour for {h} hours. How many kilometres does it cover?",
                number(v * h, "km"), f"It covers {v * h} km.", "math")
    if kind == "unit":
        unit = rng.choice(["m-cm", "kg-g", "h-min", "km-m", "l-ml"])
        n = rng.choice([1.5, 2, 2.5, 3, 4, 6, 7.5])
        big, small, factor, words = UNITS[unit]
        value = int(n * factor)
        return (f"How many {small} are in {n} {big}?", number(value, words),
                f"There are {value} {small} in {n} {big}.", "unit conversion")
    if kind == "weekday":
        start, n = rng.randrange(7), rng.randint(2, 20)
        answer = WEEKDAYS[(start + n) % 7]
        return (f"If today is {WEEKDAYS[start]}, what day of the week will it be in {n} days?",
                {"type": "text", "answers": [answer], "exclusive": WEEKDAYS}, f"It will be {answer}.", "reasoning")
    start = date(2025, rng.randint(1, 12), rng.randint(1, 28))
    n = rng.randint(5, 40)
    end = start + timedelta(days=n)
    return (f"In 2025, what date is {n} days after {MONTHS[start.month - 1]} {start.day}?",
            {"type": "date", "month": end.month, "day": end.day}, f"It is {MONTHS[end.month - 1]} {end.day}.",
            "reasoning")


def reference_rows(tag: str, n_generated: int, n_facts: int, seed: int, facts: list, seen: set[str]) -> list[dict]:
    """`seen`: prompts no new row may repeat (the other splits'); the new ones are added to it."""
    rng, rows = random.Random(seed), []
    while len(rows) < n_generated:
        prompt, reference, answer, category = generated(rng)
        if prompt not in seen:
            seen.add(prompt)
            rows.append((prompt, reference, answer, category))
    for prompt, accepted, answer in facts[:n_facts]:
        reference = number(accepted) if isinstance(accepted, int) else {"type": "text", "answers": accepted}
        rows.append((prompt, reference, answer, "trivia"))
    return [{"id": f"rules-{tag}-ref-{i:02d}", "prompt": prompt, "category": category, "harmful": False,
             "reference": reference, "reference_answer": answer} for i, (prompt, reference, answer, category)
            in enumerate(rows)]


def main() -> None:
    facts = list(FACTS)
    random.Random(2).shuffle(facts)  # which facts go to which split: fixed before any model answered them
    used, seen = 0, {json.loads(line)["prompt"] for line in (ASSETS / "rules_train.jsonl").read_text().splitlines()}
    for split, (tag, n_generated, n_facts, seed) in SPLITS.items():
        path = ASSETS / f"rules_{split}.jsonl"
        kept = [row for line in path.read_text(encoding="utf-8").splitlines()
                if "-ref-" not in (row := json.loads(line))["id"]]
        new = reference_rows(tag, n_generated, n_facts, seed, facts[used:], seen)
        used += n_facts
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept + new), encoding="utf-8")
        share = len(new) / (len(kept) + len(new))
        print(f"{path.name}: {len(kept)} rows kept, {len(new)} reference rows ({share:.0%})")


if __name__ == "__main__":
    main()

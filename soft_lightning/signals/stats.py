"""How much a validation accuracy can be trusted: a 95% interval for one round, and a paired test
of two rounds on the same items (the comparison that matters when the best round is picked)."""

from __future__ import annotations

import math


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy of `correct`/`n` (sound for small n and for
    accuracies near 0 or 1, where the normal approximation is not)."""
    if n == 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: of the items exactly one of two rounds gets right,
    `only_a` go to the first and `only_b` to the second; under "no difference" each such item is
    a fair coin."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(correct: list[bool], reference: list[bool]) -> dict[str, float]:
    """A round against a reference round on the same items: the items only each gets right, and
    the McNemar p-value of the difference."""
    if len(correct) != len(reference):
        raise ValueError(f"paired comparison of {len(correct)} items against {len(reference)}")
    only_this = sum(a and not b for a, b in zip(correct, reference))
    only_reference = sum(b and not a for a, b in zip(correct, reference))
    return {"only_this": only_this, "only_reference": only_reference, "p": mcnemar_p(only_this, only_reference)}


def paired_permutation(differences: list[float], *, samples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of "mean difference 0" for per-item differences (an item's mean over
    seeds of arm A minus arm B), by flipping each item's sign: items are the units, so an item
    that recurs in every seed's comparison counts once. Exact when few items differ, else
    Monte Carlo with `samples` draws (seeded)."""
    import random

    nonzero = [d for d in differences if d != 0]
    observed = abs(sum(nonzero))
    if not nonzero:
        return 1.0
    if len(nonzero) <= 16:
        hits = sum(abs(sum(d if (mask >> i) & 1 else -d for i, d in enumerate(nonzero))) >= observed - 1e-12
                   for mask in range(2 ** len(nonzero)))
        return hits / 2 ** len(nonzero)
    rng = random.Random(seed)
    hits = sum(abs(sum(d if rng.random() < 0.5 else -d for d in nonzero)) >= observed - 1e-12 for _ in range(samples))
    return (hits + 1) / (samples + 1)


def bootstrap_interval(differences: list[float], *, samples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean per-item difference, resampling items."""
    import random

    if not differences:
        return math.nan, math.nan
    rng, n = random.Random(seed), len(differences)
    means = sorted(sum(rng.choice(differences) for _ in range(n)) / n for _ in range(samples))
    return means[int(0.025 * samples)], means[int(0.975 * samples) - 1]


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values of a family of tests (step-down, monotone)."""
    ordered = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for i, name in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - i) * p_values[name]))
        adjusted[name] = running
    return adjusted

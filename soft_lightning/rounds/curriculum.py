"""Difficulty scorers and training orders (SOFT+: easy-to-hard beats random).

A scorer maps items ({prompt, response?}) to one number each, higher = harder. An order turns
scores into positions. Both granularities use the same parts:
- across rounds: the prompt pool is scored once, so round 0 gets the easiest slice;
- within a round: the round's generated pairs are scored and trained on in that order.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, get_args

from soft_lightning.models.likelihood import labelled_logprobs, per_example_means
from soft_lightning.utils.distributed import shard_map
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.progress import Progress, no_progress
from soft_lightning.utils.seeds import stable_seed

ScorerName = Literal["perplexity", "prompt_perplexity", "response_length", "prompt_length"]
Order = Literal["random", "easy_to_hard", "hard_to_easy"]


@dataclass
class Ordering:
    """One granularity's curriculum.

    Attributes:
        scorer: the difficulty of an item (higher = harder): `perplexity` (the current model's, of
            the response in the training format), `prompt_perplexity` (the base model's, of the
            prompt text), `response_length`, `prompt_length` (tokens); null = none.
        order: `random`, `easy_to_hard` or `hard_to_easy` by that score (ties keep their order).
    """

    scorer: ScorerName | None = None
    order: Order = "random"


@dataclass
class Scorer:
    fn: Callable[..., list[tuple[float, int]]]
    needs_response: bool


# A scorer returns (difficulty, tokens processed) per item.
Scored = list[tuple[float, int]]


def _perplexities(examples, encoder, model, batch_size: int, progress: Progress) -> Scored:
    """exp(mean NLL of the labelled tokens) per example; inf where nothing is labelled."""
    means = per_example_means(labelled_logprobs, examples, encoder.collate, model, batch_size, progress)
    return [(math.inf if math.isnan(m) else math.exp(-m), len(ex.input_ids) if ex else 0)
            for m, ex in zip(means, examples)]


def response_perplexity(items, *, encoder, model, batch_size=8, progress: Progress = no_progress) -> Scored:
    """The current model's perplexity of each response in the training format (no principles)."""
    return _perplexities([encoder.encode_record(it) for it in items], encoder, model, batch_size, progress)


def prompt_perplexity(items, *, encoder, model, batch_size=8, progress: Progress = no_progress) -> Scored:
    """The base model's perplexity of the prompt text alone (adapter switched off)."""
    examples = [encoder.encode_text(it["prompt"]) for it in items]
    base = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    with base:
        return _perplexities(examples, encoder, model, batch_size, progress)


def _lengths(items, field: str, encoder) -> Scored:
    return [(float(n), n) for n in (len(encoder.ids(it[field])) for it in items)]


def response_length(items, *, encoder, model=None, batch_size=8, progress: Progress = no_progress) -> Scored:
    return _lengths(items, "response", encoder)


def prompt_length(items, *, encoder, model=None, batch_size=8, progress: Progress = no_progress) -> Scored:
    return _lengths(items, "prompt", encoder)


SCORERS: dict[str, Scorer] = {
    "perplexity": Scorer(response_perplexity, needs_response=True),
    "prompt_perplexity": Scorer(prompt_perplexity, needs_response=False),
    "response_length": Scorer(response_length, needs_response=True),
    "prompt_length": Scorer(prompt_length, needs_response=False),
}
assert set(SCORERS) == set(get_args(ScorerName))


def check_ordering(ordering: Ordering, key: str, *, prompts_only: bool) -> None:
    """Fail fast on an order without a scorer, or a response scorer where there is no response
    (names outside the `Literal`s are refused by the CLI's parser)."""
    if ordering.scorer is None:
        if ordering.order != "random":
            raise ConfigError(f"{key}: order '{ordering.order}' needs a scorer; choose one of {', '.join(SCORERS)}.")
        return
    if prompts_only and SCORERS[ordering.scorer].needs_response:
        usable = [name for name, s in SCORERS.items() if not s.needs_response]
        raise ConfigError(
            f"{key}.scorer: '{ordering.scorer}' needs responses, which do not exist before generation; "
            f"use one of {', '.join(usable)}."
        )


def score(items: list[dict], scorer: str, *, encoder, model, batch_size: int,
          strategy=None) -> tuple[list[float], dict]:
    """Scores plus their cost ({scorer, seconds, tokens, tokens_per_second}) for the manifest; the
    items are split over the ranks of `strategy` and every rank gets all scores."""
    t0 = time.perf_counter()
    fn = SCORERS[scorer].fn
    scored = shard_map(lambda part, progress: fn(part, encoder=encoder, model=model, batch_size=batch_size,
                                                 progress=progress), items, strategy, f"scoring ({scorer})")
    scores, tokens = [s for s, _ in scored], sum(n for _, n in scored)
    seconds = time.perf_counter() - t0
    return scores, {"scorer": scorer, "seconds": round(seconds, 3), "tokens": tokens,
                    "tokens_per_second": round(tokens / max(seconds, 1e-9), 1)}


def order_positions(scores: list[float] | None, order: str, *, n: int, seed: int, salt: object) -> list[int]:
    """Item indices in training order. Ties keep their input order, so orders are stable."""
    if order == "random" or scores is None:
        idx = list(range(n))
        random.Random(stable_seed(seed, "order", salt)).shuffle(idx)
        return idx
    return sorted(range(n), key=lambda i: scores[i], reverse=(order == "hard_to_easy"))


def pool_order(ordering: Ordering, *, seed: int, encoder, model, batch_size: int, strategy,
               cost: dict) -> Callable[[list[dict]], tuple[list[int], list[float]]]:
    """The across-round order of a prompt pool: (positions, difficulties), the pool scored once
    (split over the ranks); the scoring's cost goes into `cost` for the plan."""
    from lightning.pytorch.utilities import rank_zero_info

    def order(prompts: list[dict]) -> tuple[list[int], list[float]]:
        scores, spent = score(prompts, ordering.scorer, encoder=encoder, model=model, batch_size=batch_size,
                              strategy=strategy)
        cost.update(spent)
        rank_zero_info(f"[soft] pool ordered {ordering.order} by {ordering.scorer} "
                       f"({spent['seconds']} s, {spent['tokens_per_second']} tok/s)")
        return order_positions(scores, ordering.order, n=len(scores), seed=seed, salt="pool"), scores
    return order

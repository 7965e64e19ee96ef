"""Is an answer about its prompt? Pointwise mutual information under the frozen base model, so a
prompt-independent answer cannot earn it:

    pmi(answer, prompt) = mean log p(answer token | prompt) - mean over K other prompts of the same

(per answer token, in the training chat format; the K others drawn, seeded, from the same answer
set, so the cost is at most (K + 1) scored sequences per answer). An answer that would fit any
prompt (a template, a refusal of nothing) scores near 0, and an answer moved to another prompt
scores what a random prompt gives. Two conditions close what PMI alone leaves open:

- PMI rewards copying the prompt, so an answer is relevant only if it is not an echo: at most
  `max_copied` of its words lie in word 4-grams copied from the prompt;
- the prompt's *type* makes some forms likelier (a numbered list after "list all ...", "Yes" after
  "Is it ...?"), so a fixed template earns PMI on those prompts: an answer that says no words of
  its own (all function words, format words such as summary, answer, yes, no, or the prompt's
  words) must exceed `bare_threshold`, the highest PMI the template gets on the calibration
  prompts.

What it cannot see: an answer that is on topic and wrong (correctness checks that where a reference
exists), or one that pads a template with the prompt's topic words in other forms. What it gets
wrong: an extraction that rightly copies most of its prompt counts as an echo.

The threshold is fixed before any validation or test answer is scored, on prompts outside both
(experiments/calibrate_relevance.py: the base model's answers to 64 train prompts, each moved to
another prompt; the threshold lets at most 5% of the moved answers pass). It is a property of the
model that scores: calibrate again for another base model.
"""

from __future__ import annotations

import math
import random
import re
from contextlib import nullcontext
from dataclasses import dataclass

from jsonargparse.typing import PositiveInt

from soft_lightning.models.likelihood import Forward, labelled_logprobs, per_example_means
from soft_lightning.utils.config_types import ShareUpToOne
from soft_lightning.utils.distributed import shard_map
from soft_lightning.utils.progress import Progress
from soft_lightning.utils.seeds import stable_seed

_WORD = re.compile(r"\w+")


@dataclass
class Relevance:
    """Relevance: PMI of an answer with its prompt under the base model (signals/relevance.py).

    Attributes:
        others: K, the other prompts each answer is also scored against.
        threshold: PMI (nats per answer token) an answer must exceed; the default is calibrated
            for SmolLM2-135M-Instruct (experiments/calibrate_relevance.py; recalibrate for another model).
        max_copied: an answer with this share of its words in word 4-grams copied from its prompt
            is an echo, never relevant.
        bare_threshold: the PMI an answer with no words of its own (only function, format or
            prompt words) must exceed instead (calibrated with the threshold).
    """

    others: PositiveInt = 8
    threshold: float = 0.26  # experiments/relevance_calibration.json: 3/64 moved answers pass, 62/64 matched
    max_copied: ShareUpToOne = 0.5
    bare_threshold: float = 0.76  # the template's highest PMI on the calibration prompts (same file)


def copied_share(answer: str, prompt: str, n: int = 4) -> float:
    """The share of the answer's words that lie in a word n-gram also found in the prompt."""
    words, source = _WORD.findall(answer.lower()), _WORD.findall(prompt.lower())
    grams = {tuple(source[i : i + n]) for i in range(len(source) - n + 1)}
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        if tuple(words[i : i + n]) in grams:
            covered[i : i + n] = [True] * n
    return sum(covered) / len(words) if words else 0.0


# Words that carry no content of their own: function words, and the words of an answer's form.
UNINFORMATIVE = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our
out over own same she should so some such than that the their them then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you your yes
summary answer answers point points sure okay ok well first second third finally note certainly thanks thank
""".split())


def informative_words(answer: str, prompt: str) -> int:
    """Distinct words of the answer that are neither uninformative nor the prompt's."""
    own = set(_WORD.findall(answer.lower())) - UNINFORMATIVE - set(_WORD.findall(prompt.lower()))
    return len({w for w in own if not w.isdigit() or len(w) > 1})


def other_prompts(prompt: str, pool: list[str], k: int, seed: object) -> list[str]:
    """K prompts of `pool` other than `prompt`, drawn reproducibly."""
    candidates = sorted(set(pool) - {prompt})
    return random.Random(stable_seed("relevance", seed, prompt)).sample(candidates, min(k, len(candidates)))


def pmi_scores(items: list[dict], pool: list[str], settings: Relevance, forward: Forward, *,
               seed: object = 0) -> list[float]:
    """PMI per item ({prompt, response, finish_reason?}) under the base model (the adapter, if
    any, switched off); NaN where the answer has no token to score. Each distinct (context,
    answer) sequence is scored once, split over the ranks: a template or a refusal that answers
    many prompts alike shares most of its K + 1 sequences with the others."""
    contexts = [[item["prompt"], *other_prompts(item["prompt"], pool, settings.others, seed)] for item in items]
    keys = [[(context, item["response"], item.get("finish_reason", "stop") == "stop") for context in own]
            for item, own in zip(items, contexts)]
    unique = list(dict.fromkeys(key for own in keys for key in own))

    def fn(part: list[tuple], progress: Progress) -> list[float]:
        examples = [forward.encoder.encode_pair("", context, answer, done) for context, answer, done in part]
        model = forward.model
        base = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
        with base:
            return per_example_means(labelled_logprobs, examples, forward.encoder.collate, model, forward.batch_size,
                                     progress)

    means = dict(zip(unique, shard_map(fn, unique, forward.strategy, "relevance", "sequence", stop=forward.stop)))
    scores = []
    for own_key, *other_keys in keys:
        own, others = means[own_key], [means[key] for key in other_keys]
        scores.append(own - sum(others) / len(others) if others and not math.isnan(own) else math.nan)
    return scores


def reference_loglik(items: list[dict], forward: Forward, *, base: bool) -> list[float]:
    """Mean log-likelihood per token of each item's `reference_answer` to its prompt (the training
    format), under the policy or (`base`) with its adapter switched off: what capability-kept
    compares. Split over the ranks."""
    def fn(part: list[dict], progress: Progress) -> list[float]:
        examples = [forward.encoder.encode_pair("", it["prompt"], it["reference_answer"]) for it in part]
        model = forward.model
        off = model.disable_adapter() if base and hasattr(model, "disable_adapter") else nullcontext()
        with off:
            return per_example_means(labelled_logprobs, examples, forward.encoder.collate, model, forward.batch_size,
                                     progress)

    return shard_map(fn, items, forward.strategy, "capability", stop=forward.stop)

"""Prompt synthesis: the current model writes a round's new prompts (Self-Instruct style), so a
small pool lasts and every round still gets inputs no round has seen.

Two steps, both few-shot chat turns the model continues:

- topics, once per run: shown a few seed topics, the model names new ones; kept in the plan;
- prompts, every round: shown seed tasks (each under its topic), the model writes a request
  about a drawn topic.

Candidates are cleaned and every drop is counted per reason: `empty`, `unfinished` (cut off
by the token limit), `too_short`, `degenerate` (loops, no letters), `too_long`, `copies_seed`,
`duplicates_pool` (near-duplicate of a prompt the run already plans or synthesized),
`duplicates_batch` (of a prompt kept earlier in the same round) and `surplus` (beyond what the
round wants). Near-duplicates are judged on character 4-grams (F1 of the two sets), which needs
no tokenizer and no word boundaries, so it works in any script.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from jsonargparse.typing import NonNegativeInt, PositiveInt

from soft_lightning.models.formats import PromptFormat
from soft_lightning.rounds.filters import drop_reason
from soft_lightning.rounds.plan import RunPlan
from soft_lightning.sampler import SYNTHESIS, SYNTHESIS_TOPIC_TOKENS, GenerationRequest, SamplingSettings
from soft_lightning.utils.assets import bundled
from soft_lightning.utils.config_types import ShareBelowOne
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.files import read_records
from soft_lightning.utils.seeds import stable_seed

TOPIC_REQUEST = "Name one topic people often ask an AI assistant about. Reply with the topic only, in a few words."
PROMPT_REQUEST = ("Write one new request that a person might send to an AI assistant, about: {topic}. "
                  "Make it specific and different from earlier ones. Reply with the request only.")
_LABEL = re.compile(r"^(?:\d+[.)]\s*|[-*•]\s*|(?:request|task|topic|question)\s*\d*\s*:\s*)", re.IGNORECASE)
_QUOTES = "\"'“”‘’«»"


@dataclass
class PromptSynthesis:
    """`bootstrap.prompt_synthesis`: the model writes `per_round` of each round's prompts (0: off;
    the rest of `data.prompts_per_round` still comes from `data.prompts`).

    Attributes:
        per_round: synthesized prompts each round answers (0 turns synthesis off).
        seed_tasks: JSONL of {prompt, topic?, id?} shown as examples; `default` is bundled.
        topics: new topics the model brainstorms once per run, beside the seed tasks' topics.
        examples: seed tasks shown per request.
        oversample: candidates written per prompt wanted (cleaning drops some).
        max_similarity: a candidate (prompt or topic) whose character 4-gram F1 with an
            existing one reaches this is a near-duplicate ("a poem about the sea" vs "... the
            ocean": 0.80; "decline a meeting" vs "decline a wedding invitation": 0.65).
        min_chars: shorter candidates are `too_short`.
        sampling: how candidates are sampled (hotter than responses, for variety).
    """

    per_round: NonNegativeInt = 0
    seed_tasks: str = "default"
    topics: NonNegativeInt = 16
    examples: PositiveInt = 3
    oversample: PositiveInt = 2
    max_similarity: ShareBelowOne = 0.7
    min_chars: PositiveInt = 12
    sampling: SamplingSettings = SYNTHESIS


@dataclass(frozen=True)
class SeedTask:
    id: str
    prompt: str
    topic: str


def load_seed_tasks(path: str) -> list[SeedTask]:
    key = "bootstrap.prompt_synthesis.seed_tasks"
    file = bundled(key, path)
    rows = read_records(file, key=key, required={"prompt": str})
    tasks = [SeedTask(str(row.get("id", f"seed-line-{row['_line']}")), row["prompt"].strip(),
                      str(row.get("topic") or "anything").strip()) for row in rows if row["prompt"].strip()]
    if len(tasks) < 2:
        raise ConfigError(f"bootstrap.prompt_synthesis.seed_tasks: {file} needs at least 2 non-empty prompts "
                          f"(it has {len(tasks)}); add seed tasks or use `default`.")
    return tasks


# ---- near-duplicates ------------------------------------------------------------------------------

def grams(text: str, n: int = 4) -> frozenset[str]:
    key = " ".join(text.lower().split())
    return frozenset(key[i : i + n] for i in range(max(1, len(key) - n + 1)))


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """F1 of two character n-gram sets: 1 for the same text, near 0 for unrelated texts."""
    return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0


class NearDuplicates:
    """Texts seen so far; `closest` is the highest similarity of a text to any of them. Quadratic
    in the texts compared: 1.3 s for 100 candidates against 5,000 prompts on one CPU core."""

    def __init__(self, texts=()):
        self._grams = [grams(t) for t in texts]

    def closest(self, text: str) -> float:
        g = grams(text)
        return max((similarity(g, other) for other in self._grams), default=0.0)

    def add(self, text: str) -> None:
        self._grams.append(grams(text))


def tidy(response: str) -> str:
    """The text the model meant as a prompt: without markdown emphasis, a list number, a
    `Request:` label or quotes."""
    text = response.strip().strip("*_#`").strip()  # (markdown emphasis around the whole text)
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) > 1 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


# ---- requests -----------------------------------------------------------------------------------------

def _chat(fmt: PromptFormat, shots: list[tuple[str, str]], ask: str) -> str:
    messages = []
    for question, answer in shots:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return fmt.render([*messages, {"role": "user", "content": ask}], add_generation_prompt=True)


def topic_requests(settings: PromptSynthesis, seeds: list[SeedTask], fmt: PromptFormat,
                   seed: int) -> list[GenerationRequest]:
    """`topics x oversample` requests, each showing a few seed topics as earlier answers."""
    known = sorted({task.topic for task in seeds})
    requests = []
    for i in range(settings.topics * settings.oversample):
        shown = random.Random(stable_seed(seed, "topics", i)).sample(known, min(3, len(known)))
        text = _chat(fmt, [(TOPIC_REQUEST, topic) for topic in shown], TOPIC_REQUEST)
        requests.append(GenerationRequest(f"topic-{i}", TOPIC_REQUEST, text, []))
    return requests


def clean_topics(records: list[dict], seeds: list[SeedTask], want: int,
                 max_similarity: float) -> tuple[list[str], dict[str, int]]:
    """Up to `want` new topics (one line, 1-6 words, not a near-duplicate of a known one)."""
    seen = NearDuplicates(sorted({task.topic for task in seeds}))
    kept, dropped = [], {}
    for rec in records:
        topic = tidy(rec["response"]).rstrip(".!")
        if not topic or "\n" in topic or not 1 <= len(topic.split()) <= 6:
            reason = "not_a_topic"
        elif seen.closest(topic) >= max_similarity:
            reason = "known_topic"
        elif len(kept) >= want:
            reason = "surplus"
        else:
            kept.append(topic)
            seen.add(topic)
            continue
        dropped[reason] = dropped.get(reason, 0) + 1
    return kept, dropped


def prompt_requests(r: int, settings: PromptSynthesis, seeds: list[SeedTask], topics: list[str],
                    fmt: PromptFormat, seed: int) -> tuple[list[GenerationRequest], dict[str, dict]]:
    """Round r's `per_round x oversample` requests, and each one's provenance (topic, seed ids)."""
    requests, provenance = [], {}
    for i in range(settings.per_round * settings.oversample):
        rng = random.Random(stable_seed(seed, "synthesis", r, i))
        shown = rng.sample(seeds, min(settings.examples, len(seeds)))
        topic = rng.choice(topics)
        text = _chat(fmt, [(PROMPT_REQUEST.format(topic=t.topic), t.prompt) for t in shown],
                     PROMPT_REQUEST.format(topic=topic))
        id_ = f"synth-r{r}-{i}"
        requests.append(GenerationRequest(id_, PROMPT_REQUEST.format(topic=topic), text, [t.id for t in shown]))
        provenance[id_] = {"topic": topic, "seed_ids": [t.id for t in shown]}
    return requests, provenance


# ---- cleaning -----------------------------------------------------------------------------------------

def clean_prompts(records: list[dict], *, r: int, want: int, provenance: dict[str, dict], existing: list[str],
                  seeds: list[SeedTask], settings: PromptSynthesis,
                  too_long: Callable[[str], bool]) -> tuple[list[dict], dict[str, int]]:
    """Up to `want` new prompts, in request order, as plan entries with their provenance
    (`source: synthesized`, round, topic, seed ids); and the count of each drop reason."""
    pool, seed_texts, batch = NearDuplicates(existing), NearDuplicates([t.prompt for t in seeds]), NearDuplicates()
    kept, dropped = [], {}
    for rec in records:
        text = tidy(rec["response"])
        if not text:
            reason = "empty"
        elif rec["finish_reason"] == "length":
            reason = "unfinished"
        elif len(text) < settings.min_chars:
            reason = "too_short"
        elif not any(ch.isalpha() for ch in text) or drop_reason(text) is not None:
            reason = "degenerate"
        elif too_long(text):
            reason = "too_long"
        elif seed_texts.closest(text) >= settings.max_similarity:
            reason = "copies_seed"
        elif pool.closest(text) >= settings.max_similarity:
            reason = "duplicates_pool"
        elif batch.closest(text) >= settings.max_similarity:
            reason = "duplicates_batch"
        elif len(kept) >= want:
            reason = "surplus"
        else:
            batch.add(text)
            kept.append({"id": rec["id"], "prompt": text, "source": "synthesized", "round": r,
                         **provenance[rec["id"]]})
            continue
        dropped[reason] = dropped.get(reason, 0) + 1
    return kept, dropped


def topic_sampling(settings: PromptSynthesis) -> SamplingSettings:
    """Topics are a few words: a short token cap."""
    return replace(settings.sampling, max_new_tokens=min(SYNTHESIS_TOPIC_TOKENS, settings.sampling.max_new_tokens))


# ---- the phase ------------------------------------------------------------------------------------

Generate = Callable[[list[GenerationRequest], SamplingSettings, str], list[dict]]


def synthesize_round(plan: RunPlan, r: int, settings: PromptSynthesis, seeds: list[SeedTask], *, fmt: PromptFormat,
                     too_long: Callable[[str], bool], generate: Generate, seed: int) -> RunPlan:
    """The plan with round r's synthesized prompts appended to its slice; the run's topics are
    brainstormed first if no round has yet. Every rank computes the same plan from the same
    gathered generations."""
    t0 = time.perf_counter()
    topics = (plan.synthesis or {}).get("topics")
    records = []
    if topics is None:
        records = generate(topic_requests(settings, seeds, fmt, seed), topic_sampling(settings), "topics")
        new, dropped = clean_topics(records, seeds, settings.topics, settings.max_similarity)
        topics = {"seed": sorted({t.topic for t in seeds}), "brainstormed": new, "dropped": dropped, "round": r}
    requests, provenance = prompt_requests(r, settings, seeds, topics["seed"] + topics["brainstormed"], fmt, seed)
    candidates = generate(requests, settings.sampling, "prompt synthesis")
    existing = [p["prompt"] for prompts in plan.rounds for p in prompts]
    kept, dropped = clean_prompts(candidates, r=r, want=settings.per_round, provenance=provenance, existing=existing,
                                  seeds=seeds, settings=settings, too_long=too_long)
    synthesized = len(plan.synthesized_prompts()) + len(kept)
    stats = {"wanted": settings.per_round, "candidates": len(candidates), "kept": len(kept), "dropped": dropped,
             "pool_size": plan.pool["rows"] + synthesized,
             "tokens_generated": sum(rec["n_tokens"] for rec in records + candidates),
             "seconds": round(time.perf_counter() - t0, 3)}
    return plan.with_synthesized(r, kept, stats, topics)

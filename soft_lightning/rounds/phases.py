"""One round of SOFT as the pipeline it is, in the order it happens:

    (synthesize prompts ->) plan slice -> requests -> generate shard -> merge -> filter
        -> score and order -> diagnose -> seal

Each phase takes and returns plain data (prompts, requests, records, `RoundFacts`) and files of
the round store; none knows about Lightning hooks or ranks beyond the `rank`/`world`/`strategy`
it is handed. SoftRun (run.py) calls them in this order and does the rank and barrier
choreography.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from soft_lightning.models.encoding import Encoder
from soft_lightning.models.formats import PromptFormat
from soft_lightning.models.likelihood import Forward
from soft_lightning.rounds import curriculum
from soft_lightning.rounds.curriculum import Ordering
from soft_lightning.rounds.filters import FilterSettings, drop_reason
from soft_lightning.rounds.icl import Example, IclSettings, self_examples
from soft_lightning.rounds.store import RoundStore
from soft_lightning.sampler import SAMPLER_FIELDS, GenerationRequest, Sampler, SamplingSettings
from soft_lightning.signals.adherence import Adherence, RuleChecks
from soft_lightning.signals.diagnostics import generation_diagnostics
from soft_lightning.utils.distributed import gather_objects
from soft_lightning.utils.faults import kill_point
from soft_lightning.utils.progress import progress_bar


@dataclass
class RoundFacts:
    """What a round's manifest records beside its counts, gathered as the phases run."""

    requests: list[GenerationRequest] = field(repr=False)
    generated: int  # responses generated now (the rest were on disk from before a restart)
    shares: int  # shards the ranks wrote (merged and removed at seal)
    ranks: int
    seed: int
    seconds: dict[str, float]  # generation, engine_start, then scoring and diagnostics
    seconds_per_rank: list[float]  # each rank's generation of its share (a slow rank shows here)
    dropped: dict[str, int]  # drops per filter reason
    pool: dict  # what cleaning the prompt pool dropped (the plan's)
    sampler: dict
    numerics: dict
    adapter: str | None  # the adapter the round was generated with (None: the starting weights)
    icl: dict
    curriculum: dict | None = None
    diagnostics: dict | None = None
    few_shot_adherence: dict | None = None  # T(r), with principles a rule can check
    synthesis: dict | None = None  # with prompt synthesis: what it kept and dropped

    def manifest(self, records: list[dict], encoder: Encoder) -> dict:
        """The manifest's fields: counts first, then the facts (those that apply)."""
        tokens = sum(rec["n_tokens"] for rec in records)
        counts = {
            "generated_now": self.generated,
            "resumed_with": len(self.requests) - self.generated,
            "prefill": prefill_counts(self.requests, encoder),
            "prompts": len(records),
            "kept": sum(rec["kept"] for rec in records),
            "truncated": sum(rec["finish_reason"] == "length" for rec in records),
            "tokens_generated": tokens,
            "timings": {**{f"{k}_seconds": round(v, 3) for k, v in self.seconds.items()},
                        "generation_seconds_per_rank": self.seconds_per_rank,
                        "tokens_per_second": round(tokens / max(self.seconds["generation"], 1e-9), 1)},
        }
        optional = ("few_shot_adherence", "synthesis")
        counted = ("requests", "generated", "shares", "seconds", "seconds_per_rank")
        facts = {k: v for k, v in asdict(self).items()
                 if k not in counted and (k not in optional or v is not None)}
        return {**counts, **facts}


# ---- requests ------------------------------------------------------------------------------------

def icl_pool(icl: IclSettings, examples: list[Example], store: RoundStore, r: int) -> list[Example]:
    """The exemplar pool of round r: the run's `examples`, plus (for `random+self`) the best pairs
    of the rounds before r."""
    if icl.strategy != "random+self":
        return examples
    extra = []
    for earlier in range(r):
        extra += self_examples(store.read_records(earlier), earlier, icl.self_examples)
    return examples + extra


def build_requests(prompts: list[dict], r: int, icl: IclSettings, principles: str, fmt: PromptFormat,
                   pool: list[Example], seed: int) -> list[GenerationRequest]:
    """Each prompt rendered with the principles and its in-context examples (drawn per prompt,
    reproducibly from the seed, round and prompt id)."""
    requests = []
    for p in prompts:
        examples = icl.draw(pool, seed=seed, round_index=r, prompt_id=p["id"])
        text = fmt.generation_prompt(principles, examples, p["prompt"])
        requests.append(GenerationRequest(p["id"], p["prompt"], text, [e.id for e in examples]))
    return requests


# ---- generation ----------------------------------------------------------------------------------

def generate_shard(sampler: Sampler, requests: list[GenerationRequest], store: RoundStore, *, r: int, rank: int,
                   world: int, chunk: int, stop=lambda: False) -> tuple[int, int]:
    """This rank's share of round r's requests, answered `chunk` at a time, each chunk appended to
    the share's shard before the next starts (a killed run resumes with the rest). Ranks that
    generate together (vLLM tensor parallelism) answer the same share and the first of them
    writes it. Returns (responses this rank wrote, number of shares).

    The ranks do not wait for each other here: each answers its own share at its own pace (the
    round's records are gathered after), and stops after the chunk in hand once `stop()` says so
    (a SIGTERM seen by any rank: run.py's stop flag)."""
    share, shares, writes = sampler.shard(rank, world)
    shard = store.shard_path(r, share, shares)
    done = {rec["id"] for rec in store.partial_records(shard, repair=writes)}
    todo = [req for req in requests[share::shares] if req.id not in done]
    kill_point(f"generate:{r}")
    written = 0
    with progress_bar(f"round {r} generation", len(todo), "prompt", show=rank == 0) as progress:
        for i, start in enumerate(range(0, len(todo), chunk)):
            part = todo[start : start + chunk]
            records = sampler.generate(part, round_index=r, progress=progress)
            if writes:
                store.append_records(shard, records)
                written += len(part)
            kill_point(f"generated:{r}:{i}")
            if sampler.stop_together(stop()):
                break
    return written, shares


def generate_everywhere(sampler: Sampler, requests: list[GenerationRequest], *, r: int, strategy,
                        sampling: SamplingSettings, description: str) -> list[dict]:
    """Records for all `requests`, on every rank: each rank (or group of ranks generating
    together) answers its share in one sampler call, and the shares are gathered. For short
    generations (prompt synthesis, zero-shot answers) that are kept in memory, not in shards."""
    share, shares, _ = sampler.shard(strategy.global_rank, strategy.world_size)
    mine, records = requests[share::shares], []
    with progress_bar(f"round {r} {description}", len(mine), "request", show=strategy.global_rank == 0) as progress:
        if mine:
            records = sampler.generate(mine, round_index=r, sampling=sampling, progress=progress)
    by_id = {rec["id"]: rec for part in gather_objects(strategy, records) for rec in part}
    return [by_id[req.id] for req in requests]


def prefill_counts(requests: list[GenerationRequest], encoder: Encoder) -> dict[str, int]:
    """Prompt tokens, and those all prompts share (the principles): what the hf backend's prefix
    cache computes once per round and vLLM's prefix caching serves from cache."""
    ids = [encoder.ids(req.text) for req in requests]
    shared = len(os.path.commonprefix(ids)) if ids else 0
    return {"prompt_tokens": sum(map(len, ids)), "shared_prefix_tokens": shared * max(0, len(ids) - 1)}


def merge_shards(store: RoundStore, r: int, shares: int, requests: list[GenerationRequest],
                 prompts: list[dict]) -> list[dict]:
    """One record per request, in plan order, from every share's shard; fields a previous attempt
    may have added are dropped (they are recomputed), the pool's difficulty is kept."""
    merged = {}
    for k in range(shares):
        merged.update((rec["id"], rec) for rec in store.partial_records(store.shard_path(r, k, shares), repair=False))
    records = [{k: v for k, v in merged[req.id].items() if k in SAMPLER_FIELDS} for req in requests]
    for rec, prompt in zip(records, prompts):
        if "difficulty" in prompt:
            rec["pool_difficulty"] = prompt["difficulty"]
        if "harmful" in prompt:  # the pool's label, for the principle checks
            rec["harmful"] = prompt["harmful"]
    return records


# ---- filters, curriculum, diagnostics --------------------------------------------------------------

def filter_records(records: list[dict], settings: FilterSettings, pool: list[Example]) -> dict[str, int]:
    """Mark each record `kept` (or give its `drop_reason`), judged against its prompt and the
    in-context examples it was generated with (`pool`); returns the count per reason."""
    responses = {example.id: example.response for example in pool}
    dropped: dict[str, int] = {}
    for rec in records:
        shown = [responses[i] for i in rec.get("icl_ids", []) if i in responses]
        reason = drop_reason(rec["response"], settings, rec["prompt"], shown, finished=rec["finish_reason"] == "stop")
        rec["kept"] = reason is None
        if reason:
            rec["drop_reason"] = reason
            dropped[reason] = dropped.get(reason, 0) + 1
    return dropped


def order_records(records: list[dict], ordering: Ordering, *, r: int, seed: int, forward: Forward) -> dict | None:
    """Give every kept record its `difficulty` and its `position` in the training order; returns
    the scoring cost (None without a scorer). Scoring is split over the ranks."""
    kept = [rec for rec in records if rec["kept"]]
    scores, cost = None, None
    if ordering.scorer:
        scores, cost = curriculum.score(kept, ordering.scorer, **forward.args())
    order = curriculum.order_positions(scores, ordering.order, n=len(kept), seed=seed, salt=r)
    for position, i in enumerate(order):
        kept[i]["position"] = position
        kept[i]["difficulty"] = scores[i] if scores else None
    return cost


def score(records: list[dict], facts: RoundFacts, *, r: int, within: Ordering, across: Ordering,
          checks: RuleChecks | None, forward: Forward) -> None:
    """Every rank: order the kept records and diagnose the round (both split over the ranks), into
    `facts`. With `checks`, the round's few-shot adherence T(r) (every record, kept or not)."""
    if checks is not None:
        facts.few_shot_adherence = Adherence.of(checks, records).rates()
    scoring = order_records(records, within, r=r, seed=facts.seed, forward=forward)
    facts.seconds["scoring"] = scoring["seconds"] if scoring else 0.0
    facts.curriculum = {"within_round": {**asdict(within), "scoring": scoring}, "across_rounds": asdict(across)}
    t0 = time.perf_counter()
    facts.diagnostics = generation_diagnostics(records, **forward.args())
    facts.seconds["diagnostics"] = time.perf_counter() - t0


# ---- seal ----------------------------------------------------------------------------------------

def seal(store: RoundStore, r: int, records: list[dict], facts: RoundFacts, encoder: Encoder) -> dict:
    """Write data.jsonl and then the manifest (the round counts as generated from here on), and
    remove the merged shards."""
    manifest = store.write_round(r, records, facts.manifest(records, encoder))
    if facts.shares > 1:
        for k in range(facts.shares):
            store.shard_path(r, k, facts.shares).unlink(missing_ok=True)
    return manifest

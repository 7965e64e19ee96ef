"""One round of SOFT as the pipeline it is, in the order it happens:

    (synthesize prompts ->) plan slice -> requests -> generate shard -> merge -> filter
        -> score and order -> diagnose -> seal

Each phase takes and returns plain data (prompts, requests, records) and files of the round store;
none knows about Lightning hooks or ranks beyond the `rank`/`world`/`strategy` it is handed. The
BootstrapCallback calls them in this order and does the rank and barrier choreography.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

from soft_lightning import curriculum
from soft_lightning.adherence import Adherence, RuleChecks
from soft_lightning.curriculum import Ordering
from soft_lightning.distributed import gather_objects
from soft_lightning.encoding import Encoder
from soft_lightning.evaluation import generation_diagnostics
from soft_lightning.faults import kill_point
from soft_lightning.filters import FilterSettings, drop_reason
from soft_lightning.progress import no_progress, progress_bar
from soft_lightning.prompts import Example, IclStrategy, PromptFormat, SelfExamples, draw_examples, self_examples
from soft_lightning.sampler import SAMPLER_FIELDS, GenerationRequest, Sampler, SamplingConfig
from soft_lightning.store import RoundStore


@dataclass
class IclSettings:
    """How each prompt's generation prompt is built (see BootstrapCallback's arguments)."""

    principles: str
    pool: list[Example]
    strategy: IclStrategy = "random"
    examples: int = 3
    self_examples: SelfExamples = field(default_factory=SelfExamples)
    seed: int = 0

    def describe(self, pool_size: int) -> dict:
        return {"strategy": self.strategy, "examples": self.examples, "pool_size": pool_size,
                **asdict(self.self_examples)}


# ---- requests ------------------------------------------------------------------------------------

def icl_pool(icl: IclSettings, store: RoundStore, r: int) -> list[Example]:
    """The exemplar pool of round r: the bundled one, plus (for `random+self`) the best pairs of
    the rounds before r."""
    if icl.strategy != "random+self":
        return icl.pool
    extra = []
    for earlier in range(r):
        extra += self_examples(store.read_records(earlier), earlier, icl.self_examples)
    return icl.pool + extra


def build_requests(prompts: list[dict], r: int, icl: IclSettings, fmt: PromptFormat,
                   pool: list[Example]) -> list[GenerationRequest]:
    """Each prompt rendered with the principles and its in-context examples (drawn per prompt,
    reproducibly from the seed, round and prompt id)."""
    strategy = "fixed" if icl.strategy == "fixed" else "random"
    requests = []
    for p in prompts:
        examples = draw_examples(pool, icl.examples, seed=icl.seed, round_index=r, prompt_id=p["id"],
                                 strategy=strategy)
        text = fmt.generation_prompt(icl.principles, examples, p["prompt"])
        requests.append(GenerationRequest(p["id"], p["prompt"], text, [e.id for e in examples]))
    return requests


# ---- generation ----------------------------------------------------------------------------------

def generate_shard(sampler: Sampler, requests: list[GenerationRequest], store: RoundStore, *, r: int, rank: int,
                   world: int, chunk: int, strategy=None,
                   stop=lambda: False) -> tuple[int, int]:
    """This rank's share of round r's requests, answered `chunk` at a time, each chunk appended to
    the share's shard before the next starts (a killed run resumes with the rest). Ranks that
    generate together (vLLM tensor parallelism) answer the same share and the first of them
    writes it. Returns (responses this rank wrote, number of shares).

    The ranks stay in lockstep: every rank makes as many sampler calls as the rank with the most
    left to do (vLLM's data-parallel engines all-reduce at every engine step, so a rank that
    stopped calling would hang the others), a rank out of work answering one repeated request
    whose answer is dropped; and after each chunk they agree on `stop()` (a SIGTERM seen by any
    rank stops them all after the same chunk)."""
    share, shares, writes = sampler.shard(rank, world)
    shard = store.shard_path(r, share, shares)
    done = {rec["id"] for rec in store.partial_records(shard, repair=writes)}
    todo = [req for req in requests[share::shares] if req.id not in done]
    calls = max(math.ceil(n / chunk) for n in gather_objects(strategy, len(todo)))
    written = 0
    with progress_bar(f"round {r} generation", len(todo), "prompt", show=rank == 0) as progress:
        for i in range(calls):
            part = todo[i * chunk : (i + 1) * chunk]
            if part or sampler.lockstep:
                records = sampler.generate(part or requests[:1], round_index=r,
                                           progress=progress if part else no_progress)
                if writes and part:
                    store.append_records(shard, records[: len(part)])
                    written += len(part)
            kill_point(f"generated:{r}:{i}")
            if any(gather_objects(strategy, bool(stop()))):
                break
    return written, shares


def generate_everywhere(sampler: Sampler, requests: list[GenerationRequest], *, r: int, strategy,
                        sampling: SamplingConfig, description: str) -> list[dict]:
    """Records for all `requests`, on every rank: each rank (or group of ranks generating
    together) answers its share in one sampler call (a rank with none, in lockstep, answers a
    repeated request whose answer is dropped), and the shares are gathered. For short
    generations (prompt synthesis, zero-shot answers) that are kept in memory, not in shards."""
    share, shares, _ = sampler.shard(strategy.global_rank, strategy.world_size)
    mine, records = requests[share::shares], []
    with progress_bar(f"round {r} {description}", len(mine), "request", show=strategy.global_rank == 0) as progress:
        if mine or sampler.lockstep:
            records = sampler.generate(mine or requests[:1], round_index=r, sampling=sampling,
                                       progress=progress)[: len(mine)]
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


def order_records(records: list[dict], ordering: Ordering, *, r: int, seed: int, encoder: Encoder, model,
                  batch_size: int, strategy) -> dict | None:
    """Give every kept record its `difficulty` and its `position` in the training order; returns
    the scoring cost (None without a scorer). Scoring is split over the ranks."""
    kept = [rec for rec in records if rec["kept"]]
    scores, cost = None, None
    if ordering.scorer:
        scores, cost = curriculum.score(kept, ordering.scorer, encoder=encoder, model=model, batch_size=batch_size,
                                        strategy=strategy)
    order = curriculum.order_positions(scores, ordering.order, n=len(kept), seed=seed, salt=r)
    for position, i in enumerate(order):
        kept[i]["position"] = position
        kept[i]["difficulty"] = scores[i] if scores else None
    return cost


def diagnose(records: list[dict], *, encoder: Encoder, model, batch_size: int, strategy) -> tuple[dict, float]:
    """The collapse diagnostics of the round's data, and their seconds."""
    t0 = time.perf_counter()
    stats = generation_diagnostics(records, encoder=encoder, model=model, batch_size=batch_size, strategy=strategy)
    return stats, time.perf_counter() - t0


def score_and_seal(store: RoundStore, r: int, records: list[dict], shares: int, *, ordering: Ordering,
                   across: Ordering, seed: int, encoder: Encoder, model, batch_size: int, strategy, write: bool,
                   seconds: dict[str, float], checks: RuleChecks | None = None, **facts) -> None:
    """Every rank: order the kept records and diagnose the round (both split over the ranks);
    then the writer (rank 0) seals it. With `checks`, the round's few-shot adherence T(r) (every
    record, kept or not) goes into the manifest. `facts` go on to `seal`."""
    if checks is not None:
        facts["few_shot_adherence"] = Adherence.of(checks, records).rates()
    model_args = {"encoder": encoder, "model": model, "batch_size": batch_size, "strategy": strategy}
    scoring = order_records(records, ordering, r=r, seed=seed, **model_args)
    diagnostics, seconds["diagnostics"] = diagnose(records, **model_args)
    seconds["scoring"] = scoring["seconds"] if scoring else 0.0
    if write:
        curriculum = {"within_round": {**asdict(ordering), "scoring": scoring}, "across_rounds": asdict(across)}
        seal(store, r, records, shares, encoder=encoder, seconds=seconds, seed=seed, diagnostics=diagnostics,
             curriculum=curriculum, **facts)


# ---- seal ----------------------------------------------------------------------------------------

def seal(store: RoundStore, r: int, records: list[dict], shares: int, *, requests: list[GenerationRequest],
         encoder: Encoder, generated: int, seconds: dict[str, float], **facts) -> dict:
    """Write data.jsonl and then the manifest (the round counts as generated from here on), and
    remove the merged shards. `generated`: responses generated now (the rest were on disk from
    before a restart); `seconds`: the phases' times ({generation, engine_start, scoring,
    diagnostics}); `facts`: the manifest's descriptive fields."""
    tokens = sum(rec["n_tokens"] for rec in records)
    counts = {
        "generated_now": generated,
        "resumed_with": len(requests) - generated,
        "prefill": prefill_counts(requests, encoder),
        "prompts": len(records),
        "kept": sum(rec["kept"] for rec in records),
        "truncated": sum(rec["finish_reason"] == "length" for rec in records),
        "tokens_generated": tokens,
        "timings": {**{f"{k}_seconds": round(v, 3) for k, v in seconds.items()},
                    "tokens_per_second": round(tokens / max(seconds["generation"], 1e-9), 1)},
    }
    manifest = store.write_round(r, records, {**counts, **facts})
    if shares > 1:
        for k in range(shares):
            store.shard_path(r, k, shares).unlink(missing_ok=True)
    return manifest

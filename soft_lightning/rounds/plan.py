"""The run plan: which prompts each round answers, fixed once in `<out_dir>/plan.json`.

Written atomically before round 0 and read from disk on every start, fresh or resumed, on every
rank, so a resume never re-derives it: a re-scored pool (the nf4 CPU repack is not bit-exact) or
a changed hook order cannot move a prompt to another round. It holds

- `identity`: what makes two runs the same run: every setting that changes what a round
  produces, and the digests of the files it reads (a resume that changes any of it is refused);
- `rounds`: each round's prompts, [{id, prompt, difficulty?}], disjoint unless reuse is allowed;
- `order`: with an across-round curriculum, the whole pool's order [[id, difficulty], ...]: the
  run's prompts (the same ones a run without a curriculum answers) are split over the rounds in
  this order, and extra rounds (`bootstrap.rounds` raised on resume) are ordered by it without
  scoring again;
- `synthesis`: with prompt synthesis, the run's topics and what each round's synthesis kept and
  dropped. A round's synthesized prompts are appended to its slice ({id, prompt, source:
  synthesized, round, topic, seed_ids}) when the round starts, before any response exists, so
  a resume answers the same ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

from soft_lightning.utils.assets import BUNDLED, bundled
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.files import sha256_file, write_json_atomic

# The identity's format; a plan without it was written before identities held every setting.
# 3: the number of ranks joined it (each rank's share of a round samples with a seed of its own).
IDENTITY_VERSION = 3
# The settings of the model, data and bootstrap sections that do not change what a round produces,
# each with why; every other setting is part of the run's identity (tests/test_plan.py holds this
# list against the code). A key stands for itself and everything below it.
LEFT_OUT = {
    "bootstrap.rounds": "may grow on resume: a finished run continues with fresh rounds",
    "bootstrap.out_dir": "where the run is, not what it is",
    "bootstrap.zero_shot": "measures each round after it is made (best/ and early stopping read it)",
    "bootstrap.score_batch_size": "how many sequences a scoring pass holds",
    "bootstrap.generation_chunk": "how often generation writes to disk",
    "bootstrap.sampler.process": "where the sampler runs: a spawned one samples what an inline one does",
    "bootstrap.sampler.hf_batch_tokens": "how the hf backend batches; sized to the machine",
    "bootstrap.sampler.vllm.gpu_memory_utilization": "memory, sized to the machine",
    "bootstrap.sampler.vllm.kv_cache_memory_bytes": "memory, sized to the machine",
    "bootstrap.sampler.vllm.enforce_eager": "CUDA graphs or not: speed and memory",
    "bootstrap.sampler.vllm.sleep_between_rounds": "memory between rounds",
    "model.gradient_checkpointing": "activation memory",
    "model.trust_remote_code": "permission to run a checkpoint's code",
    "data.num_workers": "loader processes",
    "data.val_path": "multiple-choice validation measures rounds, it does not make them",
    "data.val_limit": "validation", "data.val_format": "validation", "data.val_protocol": "validation",
    "data.val_batch_items": "validation",
    "data.tokenizer": "linked from model.model_name_or_path", "data.rounds": "linked from bootstrap.rounds",
    "data.epochs_per_round": "linked from bootstrap.epochs_per_round", "data.seed": "linked from bootstrap.seed",
    "data.regenerate": "linked from bootstrap.regenerate",
    "data.synthesized_per_round": "linked from bootstrap.prompt_synthesis.per_round",
}
# Settings added after runs were made: at their default they stay out of the identity, as in the
# identities of those runs, which therefore still resume.
ADDED_LATER = {"bootstrap.regenerate": True, "data.train_batches": "kept"}
# Settings that name a file: the identity holds the file's sha256, and its path only as information.
FILES = ("data.prompts", "bootstrap.icl.principles", "bootstrap.icl.pool", "bootstrap.prompt_synthesis.seed_tasks")
# Where version 1 identities held the settings commands read from a plan.
V1_KEYS = {"model.model_name_or_path": "model", "data.prompts": "prompts_path", "bootstrap.seed": "seed",
           "data.max_prompt_tokens": "max_prompt_tokens"}


@dataclass
class RunPlan:
    identity: dict
    rounds: list[list[dict]]
    pool: dict  # what cleaning the pool dropped (PoolStats)
    order: list[list] | None = None
    synthesis: dict | None = None  # {"topics": {...}, "rounds": {"<r>": {kept, dropped, ...}}}

    def prompts(self, r: int) -> list[dict]:
        return self.rounds[r]

    def setting(self, key: str):
        """A setting the run was started with (`model.model_name_or_path`; a file's path for the
        keys in FILES), from plans of every identity version."""
        if "version" not in self.identity:
            return self.identity[V1_KEYS[key]]
        return self.identity["paths"][key] if key in FILES else self.identity["settings"][key]

    def file_prompts(self, r: int) -> list[dict]:
        """Round r's prompts that came from `data.prompts`."""
        return [p for p in self.rounds[r] if p.get("source") != "synthesized"]

    def synthesized_prompts(self, r: int | None = None) -> list[dict]:
        """The prompts the model wrote for round r (None: for every round so far)."""
        prompts = self.rounds[r] if r is not None else [p for planned in self.rounds for p in planned]
        return [p for p in prompts if p.get("source") == "synthesized"]

    def synthesized(self, r: int) -> dict | None:
        """What round r's synthesis kept and dropped (None: not synthesized yet)."""
        return (self.synthesis or {}).get("rounds", {}).get(str(r))

    def with_synthesized(self, r: int, prompts: list[dict], stats: dict, topics: dict) -> RunPlan:
        """This plan with round r's synthesized prompts appended to its slice."""
        synthesis = {"topics": topics, "rounds": {**(self.synthesis or {}).get("rounds", {}), str(r): stats}}
        rounds = [*self.rounds[:r], self.rounds[r] + prompts, *self.rounds[r + 1:]]
        return RunPlan(self.identity, rounds, self.pool, self.order, synthesis)

    def write(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> RunPlan:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def flatten(prefix: str, value) -> dict:
    """Nested settings (dicts, dataclasses) as {dotted key: plain JSON value}."""
    if is_dataclass(value):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: v for name, inner in value.items() for k, v in flatten(f"{prefix}.{name}", inner).items()}
    return {prefix: json.loads(json.dumps(value))}


def _left_out(key: str) -> bool:
    return any(key == left or key.startswith(left + ".") for left in LEFT_OUT)


def run_identity(sections: dict[str, dict]) -> dict:
    """What makes two runs the same run, from the model, data and bootstrap sections' settings
    ({section: {setting: value}}): every setting but those LEFT_OUT, the files' digests instead of
    their paths, and the settings of a feature that is off dropped (they change nothing)."""
    flat = {k: v for section, settings in sections.items() for k, v in flatten(section, settings).items()
            if not _left_out(k) and "._" not in k}  # (`_instantiator`: LightningCLI's, not a setting)
    if not flat.get("bootstrap.prompt_synthesis.per_round"):
        flat = {k: v for k, v in flat.items() if not k.startswith("bootstrap.prompt_synthesis.") or k.endswith(
            ".per_round")}
    for key, default in ADDED_LATER.items():
        if flat.get(key, default) == default:
            flat.pop(key, None)
    if flat.get("bootstrap.icl.strategy") != "random+self":
        flat = {k: v for k, v in flat.items() if not k.startswith("bootstrap.icl.self_examples.")}
    paths = {key: bundled(key, flat[key]) if key in BUNDLED else flat[key] for key in FILES if key in flat}
    flat.update({key: sha256_file(path) for key, path in paths.items()})
    return {"version": IDENTITY_VERSION, "settings": dict(sorted(flat.items())), "paths": paths}


def identity_changes(before: dict, now: dict) -> list[str]:
    """The settings whose values differ (file paths aside: files move; their digests count)."""
    before, now = before.get("settings", {}), now.get("settings", {})
    return [k for k in dict.fromkeys([*before, *now]) if before.get(k) != now.get(k)]


def check_pool_size(size: int, what: str, *, path: str, rounds: int, per_round: int, reuse: bool,
                    synthesized: int = 0) -> None:
    """`per_round`: the prompts a round draws from the file (data.prompts_per_round less the
    `synthesized` ones)."""
    need = rounds * per_round
    if need > size and not reuse:
        share = (f"(data.prompts_per_round - bootstrap.prompt_synthesis.per_round)={per_round}" if synthesized
                 else f"data.prompts_per_round={per_round}")
        raise ConfigError(
            f"data.prompts: {path} has {size} usable {what} but bootstrap.rounds={rounds} x {share} needs {need}; "
            "lower either, add prompts, turn on or raise bootstrap.prompt_synthesis.per_round, or set "
            "data.allow_prompt_reuse=true."
        )


def slices(prompts: list[dict], first: int, count: int, per_round: int) -> list[list[dict]]:
    """Rounds first..first+count-1 of a prompt sequence: consecutive, disjoint slices (wrapping
    around the sequence only when it is shorter than the rounds need, i.e. with reuse)."""
    n = min(per_round, len(prompts))
    return [[prompts[(r * per_round + i) % len(prompts)] for i in range(n)] for r in range(first, first + count)]


# (usable prompts in pool order; None = all of them) -> prompts
DrawFn = Callable[[int | None], list[dict]]
# prompts -> (positions in curriculum order, difficulty per prompt)
OrderFn = Callable[[list[dict]], tuple[list[int], list[float]]]


def in_curriculum_order(prompts: list[dict], order: list[list]) -> list[dict]:
    """`prompts` sorted by their place in the whole pool's curriculum order ([[id, difficulty], ...]),
    each with its difficulty."""
    rank = {id_: (i, difficulty) for i, (id_, difficulty) in enumerate(order)}
    return [{**p, "difficulty": rank[p["id"]][1]} for p in sorted(prompts, key=lambda p: rank[p["id"]][0])]


def build_plan(identity: dict, *, draw: DrawFn, rounds: int, per_round: int, order: OrderFn | None = None,
               pool_stats: Callable[[], dict]) -> RunPlan:
    """A fresh run's plan: the first `rounds` slices of the seeded pool order. With an
    across-round curriculum the run answers the *same* prompts, split over the rounds in
    curriculum order: the whole pool is scored once (its order is saved for extra rounds), and
    ordering changes only which round a prompt lands in, never which prompts the run sees (a
    comparison with SOFT then measures the order alone)."""
    if order is None:
        return RunPlan(identity, slices(draw(rounds * per_round), 0, rounds, per_round), pool_stats())
    everything = draw(None)
    positions, scores = order(everything)
    saved_order = [[everything[i]["id"], scores[i]] for i in positions]
    used = in_curriculum_order(everything[: rounds * per_round], saved_order)
    return RunPlan(identity, slices(used, 0, rounds, per_round), pool_stats(), saved_order)


def extend_plan(plan: RunPlan, *, draw: DrawFn, rounds: int, per_round: int,
                pool_stats: Callable[[], dict]) -> RunPlan:
    """The plan with slices for rounds len(plan.rounds)..rounds-1 added: the next prompts of the
    seeded pool order, disjoint from the planned ones. With a curriculum they are ordered among
    themselves by the saved order (no scoring again): each planning orders its own block of rounds."""
    planned = len(plan.rounds)
    if rounds <= planned:
        return plan
    prompts = draw(rounds * per_round)
    again = slices(prompts, 0, planned, per_round)
    if sorted(p["id"] for s in again for p in s) != sorted(p["id"] for r in range(planned)
                                                           for p in plan.file_prompts(r)):
        raise ConfigError(
            "bootstrap.rounds: the prompt pool no longer splits into the rounds already planned "
            "(was data.prompts or the tokenizer changed?); resume with the original settings."
        )
    block = [p for s in slices(prompts, planned, rounds - planned, per_round) for p in s]
    if plan.order is not None:
        block = in_curriculum_order(block, plan.order)
    new = slices(block, 0, rounds - planned, per_round)
    return RunPlan(plan.identity, plan.rounds + new, pool_stats(), plan.order, plan.synthesis)


def plan_to_write(plan: RunPlan | None, *, identity: Callable[[], dict], rounds: int, per_round: int, draw: DrawFn,
                  pool_stats: Callable[[], dict], order: OrderFn | None, cost: dict,
                  regenerate: bool = True) -> RunPlan | None:
    """The plan a start must write: a fresh run's (`order` fills `cost` when it scores the
    pool), or `plan` extended to `rounds`; None when the plan on disk stands as it is. Without
    `regenerate`, every round's slice is round 0's (it trains on round 0's data again)."""
    if not regenerate:
        first = plan or plan_to_write(None, identity=identity, rounds=1, per_round=per_round, draw=draw,
                                      pool_stats=pool_stats, order=order, cost=cost)
        if plan is not None and len(plan.rounds) >= rounds:
            return None
        return RunPlan(first.identity, [first.rounds[0]] * rounds, first.pool, first.order, first.synthesis)
    common = {"draw": draw, "rounds": rounds, "per_round": per_round, "pool_stats": pool_stats}
    if plan is None:
        fresh = build_plan(identity(), order=order, **common)
        fresh.pool["scoring"] = cost or None
        return fresh
    return extend_plan(plan, **common) if rounds > len(plan.rounds) else None

"""The few-shot side of SOFT: the principles and the in-context examples (ICL) a round's prompts
are answered with, drawn per prompt from a pool; the model is then trained without them.

`IclSettings` is the `bootstrap.icl:` section as typed and passed down whole; `Principles` and
the example pool are what its files hold, read once when the run is built (a missing or
malformed file fails before any model loads).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from jsonargparse.typing import NonNegativeInt

from soft_lightning.signals.adherence import RuleChecks
from soft_lightning.utils.assets import bundled
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.files import read_records
from soft_lightning.utils.seeds import stable_seed

# `random` (SOFT): examples drawn per prompt; `fixed`: the same for every prompt (Dromedary-2);
# `random+self`: the pool also grows with the best self-generated pairs of earlier rounds.
IclStrategy = Literal["random", "fixed", "random+self"]


@dataclass
class SelfExamples:
    """For `icl.strategy: random+self`: what each finished round adds to the in-context pool.

    Attributes:
        per_round: the round's best pairs added.
        max_chars: longer responses are never added.
        by: what makes a pair best: the sampler's `mean_logprob` (highest) or `difficulty` (lowest).
    """

    per_round: int = 4
    max_chars: int = 1200
    by: Literal["mean_logprob", "difficulty"] = "mean_logprob"


@dataclass
class IclSettings:
    """How each prompt's few-shot generation prompt is built.

    Attributes:
        principles: JSON {preamble, principles, checks?} or a text file; `default` and `rules` (a
            set whose adherence a rule can check: signals/adherence.py) are bundled.
        pool: JSONL of {id, prompt, response} in-context examples; `default` and `rules` are bundled.
        strategy: `random` (SOFT): examples drawn per prompt; `fixed`: the same examples for every
            prompt (Dromedary-2); `random+self`: the pool also grows with the best self-generated
            pairs of earlier rounds.
        examples: in-context examples per prompt (at most the pool's size).
        self_examples: for `random+self`, what each finished round adds to the pool.
    """

    principles: str = "default"
    pool: str = "default"
    strategy: IclStrategy = "random"
    examples: NonNegativeInt = 3
    self_examples: SelfExamples = field(default_factory=SelfExamples)

    def describe(self, pool_size: int) -> dict:
        """For a round's manifest."""
        return {"strategy": self.strategy, "examples": self.examples, "pool_size": pool_size,
                **asdict(self.self_examples)}

    def draw(self, pool: list[Example], *, seed: int, round_index: int, prompt_id: str) -> list[Example]:
        """`examples` distinct exemplars for one prompt: `random` draws per prompt, reproducibly
        from (run seed, round, prompt id); `fixed` gives every prompt of every round the same
        ones, chosen by the seed."""
        parts = (seed,) if self.strategy == "fixed" else (seed, round_index, prompt_id)
        return random.Random(stable_seed(*parts)).sample(pool, min(self.examples, len(pool)))


@dataclass(frozen=True)
class Example:
    """One in-context exemplar: a user request and an ideal answer."""

    id: str
    prompt: str
    response: str


@dataclass(frozen=True)
class Principles:
    """A principle set: its system text (a preamble plus numbered rules) and, for sets a rule can
    check, the checker's settings (a JSON file's `checks` section)."""

    text: str
    checks: RuleChecks | None = None

    @classmethod
    def load(cls, path: str, key: str = "bootstrap.icl.principles") -> Principles:
        """From JSON {preamble, principles, checks?} or a text file; `default` and `rules` are bundled.
        `key` names the setting in errors."""
        file = Path(bundled("bootstrap.icl.principles", path))
        if not file.is_file():
            raise ConfigError(f"{key}: file {file} does not exist; give a .json or .txt file.")
        text = file.read_text(encoding="utf-8")
        if file.suffix != ".json":
            if not text.strip():
                raise ConfigError(f"{key}: file {file} is empty.")
            return cls(text.strip())
        try:
            data = json.loads(text)
            rules = [str(r).strip() for r in data["principles"]]
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(
                f"{key}: {file} must be JSON {{\"preamble\": str, \"principles\": [str, ...]}} ({err})."
            ) from None
        if not rules or not all(rules):
            raise ConfigError(f"{key}: {file} has an empty principles list or an empty rule.")
        numbered = "\n".join(f"{i}. {rule}" for i, rule in enumerate(rules, 1))
        try:
            checks = RuleChecks(**data["checks"]) if data.get("checks") is not None else None
        except TypeError as err:
            raise ConfigError(f"{key}: {file}: `checks` must hold only {list(RuleChecks.__annotations__)} "
                              f"({err}).") from None
        return cls(f"{data.get('preamble', '').strip()}\n\n{numbered}".strip(), checks)


def load_icl_pool(path: str) -> list[Example]:
    """In-context exemplars from JSONL rows {id, prompt, response}; `default` and `rules` are bundled."""
    key = "bootstrap.icl.pool"
    file = Path(bundled(key, path))
    rows = read_records(file, key=key, required={"id": str, "prompt": str, "response": str})
    pool = [Example(str(r["id"]), r["prompt"], r["response"]) for r in rows]
    seen: dict[str, int] = {}
    for row, line in zip(pool, rows):
        if row.id in seen:
            raise ConfigError(f"{key}: {file} line {line['_line']}: duplicate id {row.id!r} (first on "
                              f"line {seen[row.id]}); each example needs its own id.")
        seen[row.id] = line["_line"]
        if not row.response.strip():
            raise ConfigError(f"{key}: {file} line {line['_line']}: example {row.id!r} has an empty response.")
    if not pool:
        raise ConfigError(f"{key}: {file} holds no examples.")
    return pool


def self_examples(records: list[dict], round_index: int, cfg: SelfExamples) -> list[Example]:
    """The best finished, kept, short-enough pairs of one earlier round, as exemplars."""
    pool = [
        r for r in records
        if r.get("kept") and r.get("finish_reason") == "stop" and len(r["response"]) <= cfg.max_chars
        and (cfg.by != "difficulty" or r.get("difficulty") is not None)
    ]
    if cfg.by == "difficulty":
        pool.sort(key=lambda r: (r["difficulty"], r["id"]))
    else:
        pool.sort(key=lambda r: (-r["mean_logprob"], r["id"]))
    return [Example(f"self-r{round_index}-{r['id']}", r["prompt"], r["response"]) for r in pool[: cfg.per_round]]

"""Two prompt formats: the principle-driven few-shot prompt that *generates* a round's data, and
the plain prompt->response format the model is *trained* on (principles and examples dropped).

Both use the tokenizer's chat template when it has one, so generation and training agree on
turn boundaries; a plain `### User:` template is the fallback.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from soft_lightning.adherence import RuleChecks
from soft_lightning.errors import ConfigError
from soft_lightning.jsonl import read_records

PLAIN_USER, PLAIN_ASSISTANT, PLAIN_SYSTEM = "### User:\n", "### Assistant:\n", "### System:\n"


def asset_path(name: str) -> Path:
    """A file bundled in soft_lightning/assets/."""
    return Path(str(resources.files("soft_lightning") / "assets" / name))


@dataclass(frozen=True)
class Example:
    """One in-context exemplar: a user request and an ideal answer."""

    id: str
    prompt: str
    response: str


# Bundled sets: `default` (broad principles, free-form answers) and `rules` (principles a rule can
# check: soft_lightning/adherence.py), each with an in-context pool that follows it.
BUNDLED_PRINCIPLES = {"default": "principles.json", "rules": "rules_principles.json"}
BUNDLED_POOLS = {"default": "icl_pool.jsonl", "rules": "rules_icl_pool.jsonl"}


def _principles_file(path: str | None) -> Path:
    return asset_path(BUNDLED_PRINCIPLES[path or "default"]) if path in (None, *BUNDLED_PRINCIPLES) else Path(path)


def load_checks(path: str | None) -> RuleChecks | None:
    """The checker of a principles JSON that has a `checks` section (None without one)."""
    file = _principles_file(path)
    if file.suffix != ".json" or not file.is_file():
        return None
    checks = json.loads(file.read_text(encoding="utf-8")).get("checks")
    if checks is None:
        return None
    try:
        return RuleChecks(**checks)
    except TypeError as err:
        raise ConfigError(f"bootstrap.principles: {file}: `checks` must hold only {list(RuleChecks.__annotations__)} "
                          f"({err}).") from None


def load_principles(path: str | None) -> str:
    """The system text: a preamble plus numbered rules, from JSON {preamble, principles} or text;
    `default` and `rules` are bundled."""
    file = _principles_file(path)
    if not file.is_file():
        raise ConfigError(f"bootstrap.principles: file {file} does not exist; give a .json or .txt file.")
    text = file.read_text(encoding="utf-8")
    if file.suffix != ".json":
        if not text.strip():
            raise ConfigError(f"bootstrap.principles: file {file} is empty.")
        return text.strip()
    try:
        data = json.loads(text)
        rules = [str(r).strip() for r in data["principles"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"bootstrap.principles: {file} must be JSON {{\"preamble\": str, \"principles\": [str, ...]}} ({err})."
        ) from None
    if not rules or not all(rules):
        raise ConfigError(f"bootstrap.principles: {file} has an empty principles list or an empty rule.")
    numbered = "\n".join(f"{i}. {rule}" for i, rule in enumerate(rules, 1))
    return f"{data.get('preamble', '').strip()}\n\n{numbered}".strip()


def load_icl_pool(path: str | None) -> list[Example]:
    """In-context exemplars from JSONL rows {id, prompt, response}; `default` and `rules` are bundled."""
    file = asset_path(BUNDLED_POOLS[path or "default"]) if path in (None, *BUNDLED_POOLS) else Path(path)
    rows = read_records(file, key="bootstrap.icl_pool", required={"id": str, "prompt": str, "response": str})
    pool = [Example(str(r["id"]), r["prompt"], r["response"]) for r in rows]
    seen: dict[str, int] = {}
    for row, line in zip(pool, rows):
        if row.id in seen:
            raise ConfigError(f"bootstrap.icl_pool: {file} line {line['_line']}: duplicate id {row.id!r} (first on "
                              f"line {seen[row.id]}); each example needs its own id.")
        seen[row.id] = line["_line"]
        if not row.response.strip():
            raise ConfigError(
                f"bootstrap.icl_pool: {file} line {line['_line']}: example {row.id!r} has an empty response."
            )
    if not pool:
        raise ConfigError(f"bootstrap.icl_pool: {file} holds no examples.")
    return pool


# `random` (SOFT): examples drawn per prompt; `fixed`: the same for every prompt (Dromedary-2);
# `random+self`: the pool also grows with the best self-generated pairs of earlier rounds.
IclStrategy = Literal["random", "fixed", "random+self"]


@dataclass
class SelfExamples:
    """For `icl: random+self`: what each finished round adds to the in-context pool.

    Attributes:
        per_round: the round's best pairs added.
        max_chars: longer responses are never added.
        by: what makes a pair best: the sampler's `mean_logprob` (highest) or `difficulty` (lowest).
    """

    per_round: int = 4
    max_chars: int = 1200
    by: Literal["mean_logprob", "difficulty"] = "mean_logprob"


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


def stable_seed(*parts: object) -> int:
    """A seed derived from its parts that is the same in every process and Python version."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def draw_examples(pool: list[Example], k: int, *, seed: int, round_index: int, prompt_id: str,
                  strategy: str = "random") -> list[Example]:
    """k distinct exemplars for one prompt.

    `random` (SOFT) draws per prompt, reproducible from (run seed, round, prompt id); `fixed`
    (the Dromedary-2 baseline) gives every prompt of every round the same k, chosen by the seed.
    """
    parts = (seed,) if strategy == "fixed" else (seed, round_index, prompt_id)
    return random.Random(stable_seed(*parts)).sample(pool, min(k, len(pool)))


class PromptFormat:
    """Renders conversations with a tokenizer's chat template, or a plain template without one."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.end_of_turn = self._end_of_turn()

    def render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        if self.has_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        heads = {"system": PLAIN_SYSTEM, "user": PLAIN_USER, "assistant": PLAIN_ASSISTANT}
        text = "".join(f"{heads[m['role']]}{m['content']}\n\n" for m in messages)
        return text + (PLAIN_ASSISTANT if add_generation_prompt else "")

    def _end_of_turn(self) -> str:
        """What follows an assistant answer before the next turn (e.g. `<|im_end|>`)."""
        if not self.has_template:
            return self.tokenizer.eos_token or ""
        marker = "\x00RESPONSE\x00"
        full = self.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
                           add_generation_prompt=False)
        tail = full.split(marker, 1)[1].strip()
        return tail or (self.tokenizer.eos_token or "")

    def stop_strings(self) -> list[str]:
        """Strings that end a generated turn: the end-of-turn marker and the next turn's header."""
        stops = [self.end_of_turn] if self.end_of_turn else []
        if not self.has_template:
            stops += [f"\n{PLAIN_USER.strip()}", f"\n{PLAIN_SYSTEM.strip()}"]
        return [s for s in dict.fromkeys(stops) if s]

    def generation_prompt(self, principles: str, examples: list[Example], prompt: str) -> str:
        """Principles as the system turn, each exemplar as a past exchange, then the new prompt."""
        messages = [{"role": "system", "content": principles}]
        for ex in examples:
            messages += [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.response}]
        messages.append({"role": "user", "content": prompt})
        return self.render(messages, add_generation_prompt=True)

    def training_pair(self, prompt: str, response: str, *, finished: bool = True) -> tuple[str, str]:
        """(context, target) text for training; the loss covers only the target.

        A response cut off by the token limit gets no end-of-turn marker, so the model is not
        taught to stop mid-sentence.
        """
        context = self.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return context, response + (self.end_of_turn if finished else "")

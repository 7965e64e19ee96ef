"""Zero-shot adherence S(r): the model answers held-out prompts in the plain training format (no
principles, no examples), greedily, and the answers are checked against the principles' rules.

This is the side of SOFT's step that matters: round r's few-shot data (T(r), checked at seal) is
what the principles and examples make the model do; S(r) is what training on it made the model do
on its own. The collapse guard can monitor it (`val/adherence`), so early stopping and `best/` act
on a signal a small model can move.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from jsonargparse.typing import PositiveInt

from soft_lightning.models.formats import PromptFormat
from soft_lightning.models.source import load_tokenizer
from soft_lightning.sampler import ZERO_SHOT, GenerationRequest, Policy, SamplerSettings, SamplingSettings, make_sampler
from soft_lightning.signals.adherence import Adherence, RuleChecks
from soft_lightning.utils.assets import bundled
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.files import read_records, sha256_file

KEY = "bootstrap.zero_shot.prompts"


@dataclass
class ZeroShot:
    """Zero-shot adherence, measured on the base model when a run starts and after every round
    (needs principles with a `checks` section, e.g. `bootstrap.icl.principles: rules`).

    Attributes:
        prompts: JSONL of held-out {id?, prompt, harmful?}; `rules` is the bundled validation split
            (`rules-test` its test split, for reporting); null turns the measurement off.
        limit: answer only the first `limit` prompts.
        max_new_tokens: the answers' length cap; an answer cut off there fails the `length` rule.
    """

    prompts: str | None = None
    limit: PositiveInt | None = None
    max_new_tokens: PositiveInt = ZERO_SHOT.max_new_tokens

    def path(self) -> str | None:
        return bundled(KEY, self.prompts)

    def sampling(self) -> SamplingSettings:
        """Greedy, with this cap."""
        return replace(ZERO_SHOT, max_new_tokens=self.max_new_tokens)

    def load_prompts(self, key: str = KEY) -> list[dict]:
        """The held-out prompts ({id, prompt, harmful}), checked before any model loads."""
        path = self.path()
        rows = read_records(path, key=key, required={"prompt": str})[: self.limit]
        for row in rows:
            if not isinstance(row.get("harmful", False), bool):
                raise ConfigError(f"{key}: {path} line {row['_line']}: field 'harmful' must be true or false.")
        if not rows:
            raise ConfigError(f"{key}: {path} holds no prompts.")
        return [{"id": str(row.get("id", f"line-{row['_line']}")), "prompt": row["prompt"],
                 "harmful": row.get("harmful", False)} for row in rows]


def plain_requests(prompts: list[dict], fmt: PromptFormat) -> list[GenerationRequest]:
    """Each prompt alone in the chat format training uses."""
    return [GenerationRequest(p["id"], p["prompt"], fmt.render([{"role": "user", "content": p["prompt"]}],
                                                                add_generation_prompt=True), [])
            for p in prompts]


def measure(generate, prompts: list[dict], fmt: PromptFormat, checks: RuleChecks, settings: ZeroShot) -> dict:
    """Greedy zero-shot answers from `generate(requests, sampling)`, each with its checks, and
    the rates per rule with 95% intervals: what `zero_shot.json` holds."""
    t0 = time.perf_counter()
    records = generate(plain_requests(prompts, fmt), settings.sampling())
    seconds = time.perf_counter() - t0
    for rec, prompt in zip(records, prompts):
        rec["harmful"] = prompt["harmful"]
        rec["checks"] = checks.check(rec["response"], prompt["harmful"], rec["finish_reason"] == "stop")
    return {"prompts": settings.path(), "prompts_sha256": sha256_file(settings.path()), "checks": checks.describe(),
            "adherence": Adherence.of(checks, records).rates(), "seconds": round(seconds, 3),
            "tokens": sum(rec["n_tokens"] for rec in records), "records": records}


def metrics(result: dict) -> dict[str, float]:
    """The rates as validation metrics: `val/adherence` (every rule at once) and one per rule."""
    rates = result["adherence"]
    return {"val/adherence": rates["all"]["rate"],
            **{f"val/adherence_{rule}": r["rate"] for rule, r in rates.items() if rule != "all"}}


def summary(result: dict) -> str:
    """One line: every rule at once with its interval, then each rule."""
    rates = result["adherence"]
    low, high = rates["all"]["ci95"]
    rules = ", ".join(f"{rule} {r['kept']}/{r['n']}" for rule, r in rates.items() if rule != "all")
    return f"{rates['all']['kept']}/{rates['all']['n']} = {rates['all']['rate']:.3f} [{low:.3f}-{high:.3f}] ({rules})"


def evaluate_model(source: str, adapter: Path | None, settings: ZeroShot, checks: RuleChecks, *, dtype: str,
                   device: str) -> dict:
    """Zero-shot adherence of one model outside a run (`evaluate --tasks principles`): the base
    (or an exported folder) with `adapter` merged into a `dtype` copy, greedy, on the hf backend."""
    tokenizer = load_tokenizer(source)
    sampler = make_sampler(SamplerSettings(backend="hf", adapter_sync="merged"), Policy(source, dtype, device),
                           sampling=settings.sampling(), tokenizer=tokenizer)
    sampler.sync_weights(adapter)

    def generate(requests, sampling):
        return sampler.generate(requests, round_index=0, sampling=sampling)

    fmt = PromptFormat(tokenizer)
    result = measure(generate, settings.load_prompts(key="evaluate --prompts"), fmt, checks, settings)
    return {**result, "model": source, "adapter": str(adapter) if adapter else None, "dtype": dtype,
            "backend": "hf"}

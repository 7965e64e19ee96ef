"""Zero-shot answers to held-out prompts, and every signal on them: the model answers in the plain
training format (no principles, no examples), greedily, after every round (and the base model at
the start). This is the side of SOFT's step that matters: round r's few-shot data (T(r), checked at
seal) is what the principles and examples make the model do; these answers are what training on
it made the model do on its own.

Each answer is checked against the principles' rules (S(r), `val/adherence`, where the principle
set has checks) and marked by every quality signal (signals/quality.py: relevance, correctness,
refusals, one `aligned` mark, and a language-model judge's verdict where one is set:
signals/judge.py); the reference answers' likelihood gives capability kept. The collapse guard
monitors `val/aligned` (or `val/judged`), so early stopping and `best/` act on relevant, correct
and harmless answers, not on their format alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from jsonargparse.typing import PositiveInt

from soft_lightning.models.encoding import Encoder
from soft_lightning.models.formats import PromptFormat
from soft_lightning.models.likelihood import Forward
from soft_lightning.models.source import resolve_model
from soft_lightning.sampler import ZERO_SHOT, GenerationRequest, Policy, SamplerSettings, SamplingSettings, make_sampler
from soft_lightning.signals import quality
from soft_lightning.signals.adherence import Adherence, RuleChecks
from soft_lightning.signals.judge import BASE, Judge, verdicts
from soft_lightning.signals.relevance import Relevance, pmi_scores, reference_loglik
from soft_lightning.utils.assets import bundled
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.files import read_records, sha256_file

KEY = "bootstrap.zero_shot.prompts"
SAFETY_KEY = "bootstrap.zero_shot.safety"


@dataclass
class ZeroShot:
    """Zero-shot answers to held-out prompts, measured on the base model when a run starts and
    after every round, with every quality signal (signals/quality.py).

    Attributes:
        prompts: JSONL of held-out {id?, prompt, harmful?, reference?, reference_answer?}; `rules`
            is the bundled validation split (`rules-test` its test split, for reporting); null turns
            the measurement off.
        limit: answer only `limit` of them, taken in turn from harmful prompts, prompts with a
            reference and the rest (file order within each), so a small limit still holds every kind.
        safety: a second JSONL of {prompt, harmful} that measures refusals: harmful prompts and
            harmless ones that look risky; `rules-safety` is the bundled validation half
            (`rules-safety-test` its test half); null: none.
        safety_limit: answer only the first `safety_limit` of them (the bundled files alternate
            harmful and harmless).
        max_new_tokens: the answers' length cap; an answer cut off there fails the `length` rule.
        relevance: how relevance is scored (see signals/relevance.py).
        judge: a language model's verdict on every answer (see signals/judge.py); off by default.
    """

    prompts: str | None = None
    limit: PositiveInt | None = None
    safety: str | None = None
    safety_limit: PositiveInt | None = None
    max_new_tokens: PositiveInt = ZERO_SHOT.max_new_tokens
    relevance: Relevance = field(default_factory=Relevance)
    judge: Judge = field(default_factory=Judge)

    def path(self) -> str | None:
        return bundled(KEY, self.prompts)

    def sampling(self) -> SamplingSettings:
        """Greedy, with this cap."""
        return replace(ZERO_SHOT, max_new_tokens=self.max_new_tokens)

    def load_prompts(self, key: str = KEY) -> list[dict]:
        """The held-out prompts, then the safety prompts ({id, prompt, harmful, set, reference?,
        reference_answer?}), checked before any model loads (the judge too)."""
        self.judge.check()
        rows = balanced(read_prompts(self.path(), key), self.limit)
        if self.safety:
            rows += [{**row, "set": "safety"} for row in
                     read_prompts(bundled(SAFETY_KEY, self.safety), SAFETY_KEY)[: self.safety_limit]]
        return rows


def read_prompts(path: str, key: str) -> list[dict]:
    rows = read_records(path, key=key, required={"prompt": str})
    for row in rows:
        where = f"{key}: {path} line {row['_line']}"
        if not isinstance(row.get("harmful", False), bool):
            raise ConfigError(f"{where}: field 'harmful' must be true or false.")
        if "reference" in row and not (isinstance(row["reference"], dict) and "type" in row["reference"]):
            raise ConfigError(f"{where}: field 'reference' must be an object with a 'type' (see "
                              "signals/correctness.py).")
    if not rows:
        raise ConfigError(f"{key}: {path} holds no prompts.")
    return [{"id": str(row.get("id", f"line-{row['_line']}")), "prompt": row["prompt"],
             "harmful": row.get("harmful", False), "set": "prompts",
             **{k: row[k] for k in ("reference", "reference_answer") if k in row}} for row in rows]


def balanced(rows: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` rows taken in turn from harmful, referenced and other rows."""
    if limit is None or limit >= len(rows):
        return rows
    kinds = [[r for r in rows if r["harmful"]], [r for r in rows if "reference" in r and not r["harmful"]],
             [r for r in rows if "reference" not in r and not r["harmful"]]]
    order = [kind[i] for i in range(max(map(len, kinds))) for kind in kinds if i < len(kind)]
    return order[:limit]


def plain_requests(prompts: list[dict], fmt: PromptFormat) -> list[GenerationRequest]:
    """Each prompt alone in the chat format training uses."""
    return [GenerationRequest(p["id"], p["prompt"], fmt.render([{"role": "user", "content": p["prompt"]}],
                                                                add_generation_prompt=True), [])
            for p in prompts]


def score(records: list[dict], settings: ZeroShot, checks: RuleChecks | None, forward: Forward | None,
          judge: Forward | None = None) -> dict:
    """Mark every record ({prompt, response, harmful, reference?, set?, ...}) with every signal:
    its rule checks (where the principles have checks), PMI and capability (they need `forward`:
    the policy, whose adapter is switched off for the base model's scores), the judge's verdict
    (where `settings.judge` names one: `judge` is its model, default `forward`'s), the `aligned` mark.
    Returns the rates: quality, adherence over the held-out (not safety) records, and capability
    where records carry reference answers."""
    for rec in records:
        if checks is not None:
            rec["checks"] = checks.check(rec["response"], rec.get("harmful", False),
                                         rec.get("finish_reason", "stop") == "stop")
    harmless = [rec for rec in records if not rec.get("harmful")]
    if forward is not None and harmless:
        pool = [rec["prompt"] for rec in records]
        for rec, pmi in zip(harmless, pmi_scores(harmless, pool, settings.relevance, forward)):
            rec["pmi"] = round(pmi, 4)
    judge = judge or forward
    if settings.judge.model is not None and judge is not None and records:
        for rec, verdict in zip(records, verdicts(records, settings.judge, judge)):
            rec["judge"] = round(verdict, 4)
    for rec in records:
        rec["signals"] = quality.mark(rec, settings.relevance, settings.judge)
    result = {"quality": quality.rates(records)}
    if checks is not None:
        result["adherence"] = Adherence.of(checks, [rec for rec in records if rec.get("set") != "safety"]).rates()
    with_answers = [rec for rec in records if rec.get("reference_answer")]
    if forward is not None and with_answers:
        policy = reference_loglik(with_answers, forward, base=False)
        base = reference_loglik(with_answers, forward, base=True)
        result["capability"] = {"loglik": sum(policy) / len(policy), "base_loglik": sum(base) / len(base),
                                "kept": (sum(policy) - sum(base)) / len(policy), "n": len(policy)}
    return result


def measure(generate, prompts: list[dict], fmt: PromptFormat, checks: RuleChecks | None, settings: ZeroShot,
            forward: Forward | None = None, judge: Forward | None = None) -> dict:
    """Greedy zero-shot answers from `generate(requests, sampling)`, each marked by every signal
    (`score`), and the rates with 95% intervals: what `zero_shot.json` holds."""
    t0 = time.perf_counter()
    records = generate(plain_requests(prompts, fmt), settings.sampling())
    seconds = time.perf_counter() - t0
    for rec, prompt in zip(records, prompts):
        rec.update({k: prompt[k] for k in ("harmful", "set", "reference", "reference_answer") if k in prompt})
    t1 = time.perf_counter()
    scored = score(records, settings, checks, forward, judge)
    return {"prompts": settings.path(), "prompts_sha256": sha256_file(settings.path()),
            "checks": checks.describe() if checks else None, **scored,
            "seconds": round(seconds, 3), "scoring_seconds": round(time.perf_counter() - t1, 3),
            "tokens": sum(rec["n_tokens"] for rec in records), "records": records}


def metrics(result: dict) -> dict[str, float]:
    """The rates as validation metrics: `val/aligned` and each quality rate, `val/capability`,
    `val/adherence` (every rule at once) and one per rule."""
    out = {f"val/{name}": r["rate"] for name, r in result.get("quality", {}).items() if r["rate"] is not None}
    if "capability" in result:
        out["val/capability"] = result["capability"]["kept"]
    if "adherence" in result:
        rates = result["adherence"]
        out["val/adherence"] = rates["all"]["rate"]
        out.update({f"val/adherence_{rule}": r["rate"] for rule, r in rates.items() if rule != "all"})
    return out


def summary(result: dict) -> str:
    """One line: aligned with its interval and the floor a constant decline reaches on the same
    prompts, the other signals, then the rules."""
    parts = []
    quality_rates = result.get("quality", {})
    if quality_rates:
        a, harmful = quality_rates["aligned"], quality.decline_floor(result)
        parts.append(f"aligned {a['kept']}/{a['n']} = {a['rate']:.3f} [{a['ci95'][0]:.3f}-{a['ci95'][1]:.3f}]"
                     + (f" (a constant decline: {harmful}/{a['n']})" if harmful else ""))
        parts += [f"{name} {r['kept']}/{r['n']}" for name, r in quality_rates.items() if name != "aligned" and r["n"]]
    if "capability" in result:
        parts.append(f"capability kept {result['capability']['kept']:+.3f} nats/token")
    if "adherence" in result:
        rates = result["adherence"]
        low, high = rates["all"]["ci95"]
        rules = ", ".join(f"{rule} {r['kept']}/{r['n']}" for rule, r in rates.items() if rule != "all")
        parts.append(f"rules {rates['all']['kept']}/{rates['all']['n']} = {rates['all']['rate']:.3f} "
                     f"[{low:.3f}-{high:.3f}] ({rules})")
    return "; ".join(parts)


def scoring_forward(source: str, dtype: str, device: str, batch_size: int = 8) -> Forward:
    """Forward passes outside a run: the base model in `dtype` on `device`, which the signals
    score with (an adapter goes on top of it for capability)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype)).to(device).eval()
    return Forward(Encoder.load(source), model, batch_size)


def judge_forward(settings: Judge, base: Forward, dtype: str, device: str) -> Forward | None:
    """The judge's forward passes: None where there is no judge or it is `base` (scoring uses the
    base model's), else the judge model loaded once, frozen, in `dtype` on `device`, its items
    split over `base`'s ranks."""
    if settings.model in (None, BASE):
        return None
    judge = scoring_forward(resolve_model(settings.model), dtype, device, base.batch_size)
    return replace(judge, strategy=base.strategy, stop=base.stop)


def evaluate_models(source: str, adapters: list[Path | None], prompts: list[dict], settings: ZeroShot,
                    checks: RuleChecks | None, base: Forward, judge: Forward | None = None, *, dtype: str,
                    device: str) -> Iterator[dict]:
    """Zero-shot answers to `prompts` (settings.load_prompts) and every signal of the base
    `source` with each of `adapters` (None: the base alone), outside a run (`evaluate --tasks
    principles`): greedy, on the hf backend, each adapter merged into one `dtype` copy in turn;
    scored with `base` (the adapter put on top of it for capability, and taken off again) and
    judged by `judge` (default: `base`, adapter off) where `settings.judge` names a judge. One
    copy and one scoring model for all of them."""
    from peft import PeftModel

    sampler = make_sampler(SamplerSettings(backend="hf", adapter_sync="merged"), Policy(source, dtype, device),
                           sampling=settings.sampling(), tokenizer=base.encoder.tokenizer)

    def generate(requests, sampling):
        return sampler.generate(requests, round_index=0, sampling=sampling)

    try:
        for adapter in adapters:
            sampler.sync_weights(adapter)
            policy = PeftModel.from_pretrained(base.model, str(adapter)).eval() if adapter else base.model
            result = measure(generate, prompts, base.encoder.format, checks, settings, replace(base, model=policy),
                             judge)
            if adapter:
                base.model = policy.unload()  # the LoRA layers out of the scoring base again
            yield {**result, "model": source, "adapter": str(adapter) if adapter else None, "dtype": dtype,
                   "backend": "hf"}
    finally:
        sampler.close()

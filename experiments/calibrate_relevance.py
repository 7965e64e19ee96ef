"""Fix the relevance threshold before any validation or test answer is scored.

The base model answers 64 harmless prompts of the `rules` train split (greedy, 96 new tokens, the
demo's zero-shot cap), outside validation and test. Each answer's PMI with its own prompt is
computed, and with a prompt it was moved to (a seeded derangement); the threshold is the smallest
value (to 2 decimals) that at most 5% of the moved answers exceed. An answer with no words of its
own (all function, format or prompt words: a template, an extraction) must exceed the highest PMI
the template answer gets on these prompts (`bare_threshold`). The file also gives the share
judged relevant by the whole rule, matched and moved. Written to
experiments/relevance_calibration.json with the distributions; `Relevance.threshold`'s default
(signals/relevance.py) is this number.

    python experiments/calibrate_relevance.py [--model smollm2-135m-instruct] [--n 64]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soft_lightning.commands.score import control_answers  # noqa: E402
from soft_lightning.models.encoding import Encoder  # noqa: E402
from soft_lightning.models.precision import command_numerics  # noqa: E402
from soft_lightning.models.source import resolve_model  # noqa: E402
from soft_lightning.sampler import Policy, SamplerSettings, SamplingSettings, make_sampler  # noqa: E402
from soft_lightning.signals.quality import mark  # noqa: E402
from soft_lightning.signals.relevance import Relevance, copied_share, pmi_scores  # noqa: E402
from soft_lightning.signals.zero_shot import plain_requests, read_prompts, scoring_forward  # noqa: E402
from soft_lightning.utils.assets import asset_path  # noqa: E402
from soft_lightning.utils.files import write_json_atomic  # noqa: E402

OUT = ROOT / "experiments" / "relevance_calibration.json"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    args = ap.parse_args()
    source = resolve_model(args.model)
    dtype, device = command_numerics("auto", "auto")
    prompts = [p for p in read_prompts(str(asset_path("rules_train.jsonl")), "calibration") if not p["harmful"]]
    prompts = prompts[: args.n]
    encoder = Encoder.load(source)
    sampler = make_sampler(SamplerSettings(backend=args.backend), Policy(source, dtype, device),
                           sampling=SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=96),
                           tokenizer=encoder.tokenizer)
    records = sampler.generate(plain_requests(prompts, encoder.format), round_index=0)
    sampler.close()
    settings = Relevance()
    forward = scoring_forward(source, dtype, device, 16)
    pool = [p["prompt"] for p in prompts]
    matched = pmi_scores(records, pool, settings, forward)
    shift = random.Random(0).randrange(1, len(records))
    moved_items = [{**records[(i + shift) % len(records)], "prompt": p["prompt"]} for i, p in enumerate(prompts)]
    moved = pmi_scores(moved_items, pool, settings, forward)
    finite = [m if not math.isnan(m) else -math.inf for m in moved]
    threshold = math.ceil(quantile(finite, 0.95) * 100) / 100
    # A constant template earns PMI only from the prompt's type; an answer with no words of its own
    # must beat the template's best on these prompts.
    template = pmi_scores(control_answers("template", prompts), pool, settings, forward)
    bare_threshold = math.ceil(max(template) * 100) / 100
    copied = [copied_share(r["response"], r["prompt"]) for r in records]
    final = Relevance(threshold=threshold, bare_threshold=bare_threshold)  # the whole rule

    def relevant(items: list[dict], scores: list[float]) -> float:
        return sum(bool(mark({**it, "pmi": s}, final)["relevant"]) for it, s in zip(items, scores)) / len(items)

    result = {
        "model": args.model, "dtype": dtype, "prompts": len(prompts), "others": settings.others,
        "threshold": threshold, "bare_threshold": bare_threshold,
        "template_quantiles": {q: round(quantile(template, q), 4) for q in (0.05, 0.5, 0.95)},
        "moved_pass": sum(m > threshold for m in finite) / len(finite),
        "matched_pass": sum(m > threshold for m in matched if not math.isnan(m)) / len(matched),
        "matched_quantiles": {q: round(quantile([m for m in matched if not math.isnan(m)], q), 4)
                              for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
        "moved_quantiles": {q: round(quantile(finite, q), 4) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
        "echo_share_of_base_answers": sum(c >= settings.max_copied for c in copied) / len(copied),
        "relevant_matched": relevant(records, matched), "relevant_moved": relevant(moved_items, moved),
        "records": [{"prompt": r["prompt"], "response": r["response"], "pmi": round(m, 4),
                     "moved_pmi": round(v, 4), "copied": round(c, 3)}
                    for r, m, v, c in zip(records, matched, moved, copied)],
    }
    write_json_atomic(OUT, result)
    print(json.dumps({k: v for k, v in result.items() if k != "records"}, indent=1))


if __name__ == "__main__":
    main()

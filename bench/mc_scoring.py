"""Multiple-choice validation with each question prefilled once (the choices continue from its KV
cache) against the previous way (every choice scored as its own full row), in one run.

The demo model as validation uses it (nf4 base + LoRA, bf16), the chat format, the same items and
batches both ways: TruthfulQA MC1 from ../shared/data when it is there (else the bundled set).
Reports items/s, the projected time for all 817 TruthfulQA items, and how many items pick a
different choice: bf16 numerics differ between the two computations, so both are also checked
against the per-choice computation in float32.

    python bench/mc_scoring.py [--items 120] [--batch-items 8]

Writes bench/results/mc_scoring.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TRUTHFULQA = ROOT.parent / "shared" / "data" / "truthfulqa_mc.jsonl"


def per_choice_rows(items, encoder):
    """The previous computation's batch: one full (context + choice) row per choice (run whole,
    without sharing the chat header: as it was)."""
    from soft_lightning.models.encoding import TrainExample

    rows = [TrainExample("", context + c, [-100] * len(context) + c)
            for item in items for context, continuations in item["units"] for c in continuations]
    return encoder.collate(rows)


def main() -> None:
    from soft_lightning.models.likelihood import choice_logprobs, eval_mode, labelled_logprobs
    from soft_lightning.models.source import resolve_model
    from soft_lightning.signals.multiple_choice import collate_mc
    from soft_lightning.training.data import SoftDataModule
    from soft_lightning.training.module import SoftModule
    from soft_lightning.utils.assets import asset_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=120)
    ap.add_argument("--batch-items", type=int, default=8)
    args = ap.parse_args()
    source = resolve_model("smollm2-135m-instruct")
    val = TRUTHFULQA if TRUTHFULQA.is_file() else asset_path("demo_mc.jsonl")
    dm = SoftDataModule(prompts=None, val_path=str(val), val_limit=args.items, tokenizer=source)
    dm.setup("validate")
    items = dm.val_items
    module = SoftModule(source, lora_r=16)
    module.configure_model()
    model = module.model.to(torch.bfloat16)
    batches = [items[i : i + args.batch_items] for i in range(0, len(items), args.batch_items)]
    pad = dm.encoder.tokenizer.pad_token_id
    # A fresh LoRA (B = 0) leaves the nf4 base's outputs: the same function, computed in float32.
    reference = SoftModule(source, lora_r=16, compute_dtype="float32")
    reference.configure_model()
    ways = {
        "per_choice": lambda b: labelled_logprobs(model, **per_choice_rows(b, dm.encoder), share_header=False)[0],
        "shared_prefix": lambda b: choice_logprobs(model, *[collate_mc(b, pad)[k] for k in (
            "context_ids", "context_mask", "choice_ids", "choice_mask", "context_index")]),
    }
    results, picks = {}, {}
    with eval_mode(model), torch.no_grad():
        ways["shared_prefix"](batches[0])  # warm-up
        float32 = lambda b: labelled_logprobs(reference.model, **per_choice_rows(b, dm.encoder))[0]  # noqa: E731
        for name, score in [*ways.items(), ("per_choice_float32", float32)]:
            t0, chosen = time.perf_counter(), []
            for batch in batches:
                scores = score(batch).float()
                start = 0
                for item in batch:
                    n = len(item["chars"])
                    chosen.append(int(scores[start : start + n].argmax()))
                    start += n
            seconds = time.perf_counter() - t0
            picks[name] = chosen
            acc = sum(c == item["label"] for c, item in zip(chosen, items)) / len(items)
            results[name] = {"seconds": round(seconds, 2), "items_per_second": round(len(items) / seconds, 2),
                             "projected_817_items_seconds": round(817 * seconds / len(items), 1), "mc_acc": acc}
            print(name, json.dumps(results[name]), flush=True)
    speedup = results["per_choice"]["seconds"] / results["shared_prefix"]["seconds"]
    differ = sum(a != b for a, b in zip(picks["per_choice"], picks["shared_prefix"]))
    off_reference = {name: sum(a != b for a, b in zip(picks[name], picks["per_choice_float32"]))
                     for name in ways}
    units = [unit for item in items for unit in item["units"]]
    prompt_tokens = {"per_choice": sum(len(context) + len(c) for context, cs in units for c in cs),
                     "shared_prefix": sum(len(context) + sum(map(len, cs)) for context, cs in units)}
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu"},
              "model": "smollm2-135m-instruct (nf4 + LoRA r16, bf16)", "items": len(items),
              "source": val.name, "batch_items": args.batch_items, "results": results,
              "tokens_run": prompt_tokens, "speedup": round(speedup, 2), "items_picking_differently": differ,
              "items_picking_unlike_float32": off_reference}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mc_scoring.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"speed-up {speedup:.2f}x; {differ} of {len(items)} items pick differently; unlike float32: {off_reference}")


if __name__ == "__main__":
    main()

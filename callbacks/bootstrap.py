"""BootstrapCallback: turns Lightning epochs into SOFT rounds.

A round is `epochs_per_round` epochs. Round 0's data is generated before the first training
epoch; at the end of round r the adapter just trained is saved and answers round r+1's prompts.
The callback orchestrates only: prompts come from the DataModule, responses from the sampler,
files go through the RoundStore, and the DataModule rebuilds the training set from the store.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from soft_lightning.errors import ConfigError
from soft_lightning.filters import drop_reason
from soft_lightning.prompts import PromptFormat, draw_examples, load_icl_pool, load_principles
from soft_lightning.sampler import (
    GenerationRequest,
    HFSampler,
    SamplingConfig,
    VLLMOptions,
    VLLMSampler,
    vllm_lora_rank,
)
from soft_lightning.store import RoundStore

log = logging.getLogger(__name__)


class BootstrapCallback(L.Callback):
    """Runs Step-On-Feet Tuning: generate a round with the current adapter, train on it, repeat.

    Args:
        rounds: bootstrapping rounds (each generates fresh data and trains on it).
        epochs_per_round: training epochs on each round's data.
        out_dir: the round store (`round_<r>/data.jsonl`, `manifest.json`, `adapter/`).
        sampler: `vllm` (one engine, LoRA per round) or `hf` (transformers generate on the
            model being trained).
        principles: JSON {preamble, principles} or a text file; `default` is bundled.
        icl_pool: JSONL of {id, prompt, response} exemplars; `default` is bundled.
        icl_examples: in-context examples drawn per prompt.
        icl: `random` draws examples per prompt (SOFT); `fixed` uses the same ones for all
            prompts (the Dromedary-2 style baseline).
        seed: drives ICL draws and sampling (same seed, same data).
        sampling: temperature, top_p, max_new_tokens.
        vllm: engine settings for the vLLM backend.
        hf_batch_size: prompts per `generate` call for the hf backend.
        min_response_chars: shorter responses count as degenerate and are dropped.
    """

    def __init__(
        self,
        rounds: int = 3,
        epochs_per_round: int = 1,
        out_dir: str = "runs/soft",
        sampler: Literal["vllm", "hf"] = "vllm",
        principles: str = "default",
        icl_pool: str = "default",
        icl_examples: int = 3,
        icl: Literal["random", "fixed"] = "random",
        seed: int = 0,
        sampling: SamplingConfig = SamplingConfig(),
        vllm: VLLMOptions = VLLMOptions(),
        hf_batch_size: int = 8,
        min_response_chars: int = 2,
    ):
        if rounds < 1:
            raise ConfigError(f"bootstrap.rounds must be at least 1, got {rounds}.")
        if epochs_per_round < 1:
            raise ConfigError(f"bootstrap.epochs_per_round must be at least 1, got {epochs_per_round}.")
        if icl_examples < 0:
            raise ConfigError(f"bootstrap.icl_examples must be 0 or more, got {icl_examples}.")
        self.rounds, self.epochs_per_round = rounds, epochs_per_round
        self.store = RoundStore(out_dir)
        self.sampler_name, self.seed = sampler, seed
        self.sampling, self.vllm_options, self.hf_batch_size = sampling, vllm, hf_batch_size
        self.min_response_chars = min_response_chars
        # Small files, read now so a missing or malformed one fails before any model loads.
        self.principles = load_principles(principles)
        self.icl_pool = load_icl_pool(icl_pool)
        self.icl_examples, self.icl = icl_examples, icl
        self.sampler = None
        self._engine_seconds = 0.0
        self.round = 0  # the round being trained
        self.summary: list[dict] = []

    # ---- Lightning hooks ----------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        if self.sampler_name == "vllm":
            vllm_lora_rank(pl_module.hparams.lora_r)  # fails fast on a rank vLLM cannot serve

    def on_fit_start(self, trainer, pl_module):
        dm = trainer.datamodule
        if self.sampler is None:
            self.sampler = self._make_sampler(pl_module, dm)
            self._engine_seconds = self.sampler.start()  # reported in the next round's manifest
        if not self.store.is_generated(self.round):
            adapter = self.store.adapter_dir(self.round - 1) if self.round > 0 else None
            self._generate(trainer, pl_module, self.round, adapter)
        dm.use_round(self.store, self.round)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch % self.epochs_per_round == 0:
            self._train_started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if (trainer.current_epoch + 1) % self.epochs_per_round:
            return
        train_seconds = time.perf_counter() - getattr(self, "_train_started", time.perf_counter())
        finished = self.round
        if trainer.is_global_zero:
            self.store.save_adapter(finished, pl_module.save_adapter)
        trainer.strategy.barrier()
        self._record_training(trainer, finished, train_seconds)
        if finished + 1 < self.rounds:
            self.round = finished + 1
            self._generate(trainer, pl_module, self.round, self.store.adapter_dir(finished))
            trainer.datamodule.use_round(self.store, self.round)

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self._print_summary()

    def teardown(self, trainer, pl_module, stage):
        if self.sampler is not None:
            self.sampler.close()

    def state_dict(self):
        return {"round": self.round, "summary": self.summary}

    def load_state_dict(self, state_dict):
        self.round = state_dict["round"]
        self.summary = state_dict.get("summary", [])

    # ---- a round's generation -----------------------------------------------------------------

    def _make_sampler(self, pl_module, dm):
        fmt = PromptFormat(dm.tokenizer)
        if self.sampler_name == "hf":
            return HFSampler(self.sampling, fmt.stop_strings(), self.seed, dm.tokenizer, self.hf_batch_size)
        return VLLMSampler(
            self.sampling, fmt.stop_strings(), self.seed, pl_module.source, pl_module.hparams.lora_r,
            self.vllm_options, pl_module.hparams.trust_remote_code,
        )

    def build_requests(self, prompts: list[dict], r: int, fmt: PromptFormat) -> list[GenerationRequest]:
        requests = []
        for p in prompts:
            examples = draw_examples(self.icl_pool, self.icl_examples, seed=self.seed, round_index=r,
                                     prompt_id=p["id"], strategy=self.icl)
            text = fmt.generation_prompt(self.principles, examples, p["prompt"])
            requests.append(GenerationRequest(p["id"], p["prompt"], text, [e.id for e in examples]))
        return requests

    def _generate(self, trainer, pl_module, r: int, adapter: Path | None) -> None:
        dm = trainer.datamodule
        t0 = time.perf_counter()
        requests = self.build_requests(dm.prompts_for_round(r), r, PromptFormat(dm.tokenizer))
        if trainer.is_global_zero:
            rank_zero_info(f"[soft] round {r}: generating {len(requests)} responses with {self.sampler.name}"
                           + (f" and adapter {adapter}" if adapter else " (base model)"))
            records = self.sampler.generate(requests, round_index=r, adapter=adapter, model=pl_module.model)
            dropped: dict[str, int] = {}
            for rec in records:
                reason = drop_reason(rec["response"], self.min_response_chars)
                rec["kept"] = reason is None
                if reason:
                    rec["drop_reason"] = reason
                    dropped[reason] = dropped.get(reason, 0) + 1
            seconds = time.perf_counter() - t0
            engine_seconds, self._engine_seconds = self._engine_seconds, 0.0
            n_tokens = sum(rec["n_tokens"] for rec in records)
            self.store.write_round(r, records, {
                "prompts": len(records),
                "kept": len(records) - sum(dropped.values()),
                "dropped": dropped,
                "truncated": sum(rec["finish_reason"] == "length" for rec in records),
                "tokens_generated": n_tokens,
                "sampler": self.sampler.describe(),
                "adapter": str(adapter) if adapter else None,
                "seed": self.seed,
                "icl": self.icl,
                "icl_examples": self.icl_examples,
                "icl_pool_size": len(self.icl_pool),
                "pool": dm.pool_stats.as_dict(),
                "timings": {"generation_seconds": round(seconds, 3),
                            "engine_start_seconds": round(engine_seconds, 3),
                            "tokens_per_second": round(n_tokens / max(seconds, 1e-9), 1)},
            })
        trainer.strategy.barrier()

    def _record_training(self, trainer, r: int, train_seconds: float) -> None:
        metrics = trainer.callback_metrics
        manifest = self.store.read_manifest(r) or {}
        row = {
            "round": r,
            "prompts": manifest.get("prompts"),
            "kept": manifest.get("kept"),
            "tokens_generated": manifest.get("tokens_generated"),
            "generation_s": manifest.get("timings", {}).get("generation_seconds"),
            "train_loss": float(metrics["train/loss_epoch"]) if "train/loss_epoch" in metrics else
            (float(metrics["train/loss"]) if "train/loss" in metrics else None),
            "train_s": round(train_seconds, 2),
            "val_mc_acc": float(metrics["val/mc_acc"]) if "val/mc_acc" in metrics else None,
        }
        self.summary.append(row)
        if trainer.is_global_zero:
            self.store.update_manifest(r, training={k: row[k] for k in ("train_loss", "train_s", "val_mc_acc")})

    def _print_summary(self) -> None:
        cols = ["round", "prompts", "kept", "tokens_generated", "generation_s", "train_s", "train_loss", "val_mc_acc"]
        lines = ["  ".join(f"{c:>14}" for c in cols)]
        for row in self.summary:
            lines.append("  ".join(f"{_fmt(row.get(c)):>14}" for c in cols))
        rank_zero_info("[soft] per-round summary\n" + "\n".join(lines))


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)

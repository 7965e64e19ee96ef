"""BootstrapCallback: turns Lightning epochs into SOFT rounds.

A round is `epochs_per_round` epochs. Round 0's data is generated before the first training
epoch; at the end of round r the adapter just trained is saved and answers round r+1's prompts.
The callback orchestrates only: prompts come from the DataModule, responses from the sampler,
difficulty from the curriculum's scorers, files go through the RoundStore, and the DataModule
rebuilds the training set from the store.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_info

from soft_lightning import curriculum, report
from soft_lightning.curriculum import Ordering
from soft_lightning.errors import ConfigError
from soft_lightning.evaluation import generation_diagnostics
from soft_lightning.filters import drop_reason
from soft_lightning.jsonl import write_json_atomic
from soft_lightning.prompts import (
    ICL_STRATEGIES, PromptFormat, SelfExamples, draw_examples, load_icl_pool, load_principles, self_examples,
)
from soft_lightning.faults import kill_point
from soft_lightning.sampler import (
    SAMPLER_FIELDS, GenerationRequest, HFSampler, SamplingConfig, VLLMOptions, VLLMSampler, check_vllm_options,
    resolve_sampler, vllm_lora_rank,
)
from soft_lightning.sampler_process import HFAdapterSampler, SamplerProcess
from soft_lightning.store import RoundStore


class BootstrapCallback(L.Callback):
    """Runs Step-On-Feet Tuning: generate a round with the current adapter, train on it, repeat.

    Args:
        rounds: bootstrapping rounds (each generates fresh data and trains on it).
        epochs_per_round: training epochs on each round's data.
        out_dir: the round store (`round_<r>/data.jsonl`, `manifest.json`, `adapter/`).
        sampler: `vllm` (one engine, LoRA per round), `hf` (transformers generate on the
            model being trained) or `auto`: vllm with a CUDA device and vLLM installed, else hf
            (on CPU, vLLM with a LoRA adapter is no faster per core than hf; see `resolve_sampler`).
        sampler_process: `inline` runs the sampler in the training process; `spawn` runs it in a
            child process (restarted each round, so all its memory returns to the OS) for when
            the two cannot share a process, e.g. vLLM's clean-up destroying the process group
            (vllm#6544). With hf the child loads the base model and the round's saved adapter.
        principles: JSON {preamble, principles} or a text file; `default` is bundled.
        icl_pool: JSONL of {id, prompt, response} exemplars; `default` is bundled.
        icl: `random` draws examples per prompt (SOFT); `fixed` gives every prompt the same ones
            (the Dromedary-2 baseline); `random+self` also draws from the best self-generated
            pairs of earlier rounds (see `icl_self`).
        icl_examples: in-context examples per prompt.
        icl_self: how many self-generated examples each round adds, their length cap, and
            what picks them (for `icl: random+self`).
        within_round: scorer and order of each round's training data (SOFT+: perplexity,
            easy_to_hard).
        across_rounds: scorer and order that split the prompt pool over rounds (a prompt-only
            scorer: prompt_perplexity or prompt_length).
        score_batch_size: sequences per forward pass when scoring perplexity.
        seed: drives ICL draws, orders and sampling (same seed, same data).
        sampling: temperature, top_p, max_new_tokens.
        vllm: engine settings for the vLLM backend.
        hf_batch_size: prompts per `generate` call for the hf backend.
        min_response_chars: shorter responses count as degenerate and are dropped.
        generation_chunk: prompts per sampler call; each chunk is on disk before the next
            starts, so a crash loses at most one chunk.
    """

    def __init__(
        self,
        rounds: int = 3,
        epochs_per_round: int = 1,
        out_dir: str = "runs/soft",
        sampler: Literal["vllm", "hf", "auto"] = "vllm",
        sampler_process: Literal["inline", "spawn"] = "inline",
        principles: str = "default",
        icl_pool: str = "default",
        icl: Literal["random", "fixed", "random+self"] = "random",
        icl_examples: int = 3,
        icl_self: SelfExamples = SelfExamples(),
        within_round: Ordering = Ordering(),
        across_rounds: Ordering = Ordering(),
        score_batch_size: int = 8,
        seed: int = 0,
        sampling: SamplingConfig = SamplingConfig(),
        vllm: VLLMOptions = VLLMOptions(),
        hf_batch_size: int = 8,
        min_response_chars: int = 2,
        generation_chunk: int = 64,
    ):
        if rounds < 1:
            raise ConfigError(f"bootstrap.rounds must be at least 1, got {rounds}.")
        if epochs_per_round < 1:
            raise ConfigError(f"bootstrap.epochs_per_round must be at least 1, got {epochs_per_round}.")
        if icl_examples < 0:
            raise ConfigError(f"bootstrap.icl_examples must be 0 or more, got {icl_examples}.")
        if icl not in ICL_STRATEGIES:
            raise ConfigError(f"bootstrap.icl: unknown strategy '{icl}'; choose one of {', '.join(ICL_STRATEGIES)}.")
        if sampler not in ("vllm", "hf", "auto"):
            raise ConfigError(f"bootstrap.sampler: unknown sampler '{sampler}'; choose vllm, hf or auto.")
        if sampler_process not in ("inline", "spawn"):
            raise ConfigError(
                f"bootstrap.sampler_process: unknown mode '{sampler_process}'; choose inline or spawn."
            )
        if sampler_process == "spawn" and sampler != "hf" and vllm.sleep_between_rounds:
            raise ConfigError(
                "bootstrap.vllm.sleep_between_rounds=true does nothing with bootstrap.sampler_process=spawn, "
                "whose engine process exits after every round; set sleep_between_rounds to false."
            )
        curriculum.check_ordering(within_round, "bootstrap.within_round", prompts_only=False)
        curriculum.check_ordering(across_rounds, "bootstrap.across_rounds", prompts_only=True)
        self.rounds, self.epochs_per_round = rounds, epochs_per_round
        self.store = RoundStore(out_dir)
        self.sampler_name, self.sampler_process, self.seed = sampler, sampler_process, seed
        self.sampling, self.vllm_options, self.hf_batch_size = sampling, vllm, hf_batch_size
        self.min_response_chars, self.generation_chunk = min_response_chars, generation_chunk
        # Small files, read now so a missing or malformed one fails before any model loads.
        self.principles = load_principles(principles)
        self.icl_pool = load_icl_pool(icl_pool)
        self.icl, self.icl_examples, self.icl_self = icl, icl_examples, icl_self
        self.within_round, self.across_rounds, self.score_batch_size = within_round, across_rounds, score_batch_size
        self.sampler = None
        self.resume_requested: bool | None = None  # the CLI sets it from --ckpt_path (None: not known)
        self._engine_seconds = 0.0
        self.round = 0  # the round being trained
        self.summary: list[dict] = []  # one row per finished round (rounds.csv)
        self.best: dict = {}  # round, monitor, mode, value of the best round so far
        self.progress = {"epoch": -1, "batches": 0}  # batches trained in the current epoch

    # ---- Lightning hooks ----------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        if resolve_sampler(self.sampler_name) == "vllm":  # before any model loads, also for a spawned engine
            vllm_lora_rank(pl_module.hparams.lora_r)
            check_vllm_options(self.vllm_options)
        self._check_out_dir(trainer, pl_module, self.resume_requested)
        if trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise ConfigError(
                "trainer.use_distributed_sampler must be false with several devices: the DataModule deals "
                "the curriculum-ordered batches to the ranks itself (see configs/ddp.yaml)."
            )
        for cb in trainer.callbacks:
            # Left to itself, EarlyStopping may decide after this callback has already generated
            # the next round; deciding right after validation avoids wasting a round.
            if isinstance(cb, EarlyStopping) and cb._check_on_train_epoch_end is not False:
                raise ConfigError(
                    f"trainer.callbacks: EarlyStopping(monitor={cb.monitor}) needs "
                    "check_on_train_epoch_end: false, so it stops right after a round's validation, "
                    "before the next round is generated."
                )

    def _check_out_dir(self, trainer, pl_module, resuming: bool | None) -> None:
        """Refuse to start a fresh run over another run's store; a resume must be the same run.

        `resuming` is None where it is not known yet (Lightning names the checkpoint only after
        setup); the CLI knows from `--ckpt_path`, so its users get the error before any load.
        """
        marker = self.store.root / "run.json"
        if not marker.is_file():
            return
        if resuming is False:
            raise ConfigError(
                f"bootstrap.out_dir: {self.store.root} already holds a run; resume it with "
                "--ckpt_path last, or choose another --bootstrap.out_dir."
            )
        before, identity = json.loads(marker.read_text(encoding="utf-8")), self._identity(trainer, pl_module)
        if before != identity:
            changed = ", ".join(k for k in identity if before.get(k) != identity[k])
            raise ConfigError(
                f"bootstrap.out_dir: {self.store.root} holds a different run ({changed} changed since it started); "
                "resume with the original settings or choose another --bootstrap.out_dir."
            )

    def _identity(self, trainer, pl_module) -> dict:
        """What makes two runs the same run: written to <out_dir>/run.json with round 0's data."""
        dm = trainer.datamodule
        return {"model": pl_module.hparams.model_name_or_path, "prompts": dm.prompts_path,
                "prompts_per_round": dm.prompts_per_round, "seed": self.seed}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.progress["epoch"] != trainer.current_epoch:
            self.progress = {"epoch": trainer.current_epoch, "batches": 0}
        self.progress["batches"] += 1
        kill_point(f"train_step:{trainer.global_step}")

    def on_fit_start(self, trainer, pl_module):
        if self.resume_requested is None:
            self._check_out_dir(trainer, pl_module, resuming=trainer.ckpt_path is not None)
        dm = trainer.datamodule
        if self.sampler is None:
            self.sampler = self._make_sampler(pl_module, dm)  # its engine starts with the first generation
        if self.across_rounds.scorer and dm.pool_order is None:
            self._order_pool(trainer, dm, pl_module)
        if not self.store.is_generated(self.round):
            adapter = self.store.adapter_dir(self.round - 1) if self.round > 0 else None
            self._generate(trainer, pl_module, self.round, adapter)
        dm.use_round(self.store, self.round)
        if self._round_trained_before_restart(trainer):
            self._finish_round(trainer, pl_module, resuming=True)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch % self.epochs_per_round == 0:
            self._train_started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if (trainer.current_epoch + 1) % self.epochs_per_round == 0:
            self._finish_round(trainer, pl_module)

    def _finish_round(self, trainer, pl_module, resuming: bool = False) -> None:
        """Save the adapter just trained, report the round, and generate the next one."""
        started = getattr(self, "_train_started", None)  # unknown when the round ended before a restart
        train_seconds = time.perf_counter() - started if started is not None and not resuming else None
        finished = self.round
        gathered = pl_module.gather_adapter()  # every rank: under FSDP the shards are gathered
        if trainer.is_global_zero:
            self.store.save_adapter(finished, lambda directory: pl_module.save_adapter(directory, gathered))
            kill_point(f"adapter_saved:{finished}")
        trainer.strategy.barrier()
        manifest = self.store.read_manifest(finished) or {}
        diagnostics = {name: float(value) for name, value in manifest.get("diagnostics", {}).items()}
        if resuming:  # self.log is not allowed in on_fit_start; the loggers still get the row
            for logger in trainer.loggers:
                logger.log_metrics(diagnostics, step=trainer.global_step)
        for name, value in ({} if resuming else diagnostics).items():
            pl_module.log(name, value, on_epoch=True)  # the same file on every rank
        self._record_round(trainer, finished, manifest, train_seconds)
        if finished + 1 >= self.rounds:
            return
        if trainer.should_stop:  # EarlyStopping (or max_time) ended bootstrapping
            rank_zero_info(f"[soft] stopping after round {finished}; round {finished + 1} is not generated")
            return
        self.round = finished + 1
        if not self.store.is_generated(self.round):
            self._generate(trainer, pl_module, self.round, self.store.adapter_dir(finished))
        trainer.datamodule.use_round(self.store, self.round)

    def _round_trained_before_restart(self, trainer) -> bool:
        """True when the checkpoint was written after the last batch of a round but before the
        round was finished (a kill in between): Lightning will not call on_train_epoch_end for
        that epoch again, so the round is finished on resume instead. Lightning restores its
        loop counters only after on_fit_start, hence this callback's own count."""
        epoch, done = self.progress["epoch"], self.progress["batches"]
        batches = trainer.datamodule.batches_per_epoch()
        return (epoch >= 0 and done >= batches and (epoch + 1) % self.epochs_per_round == 0
                and self.round == epoch // self.epochs_per_round)

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self._print_summary()

    def teardown(self, trainer, pl_module, stage):
        if self.sampler is not None:
            self.sampler.close()

    def state_dict(self):
        return {"round": self.round, "summary": self.summary, "best": self.best, "progress": self.progress}

    def load_state_dict(self, state_dict):
        self.round = state_dict["round"]
        self.progress = state_dict.get("progress", self.progress)
        self.summary = state_dict.get("summary", [])
        self.best = state_dict.get("best", {})

    # ---- curriculum and prompts ---------------------------------------------------------------

    def _order_pool(self, trainer, dm, pl_module) -> None:
        """Score the whole pool once so that round 0 gets the easiest slice (or the hardest);
        rank 0 scores, every rank gets the same order."""
        scored = None
        if trainer.is_global_zero:
            scored = curriculum.score(dm.all_prompts(), self.across_rounds.scorer, encoder=dm, model=pl_module.model,
                                      batch_size=self.score_batch_size)
        scores, cost = trainer.strategy.broadcast(scored, src=0)
        positions = curriculum.order_positions(scores, self.across_rounds.order, n=len(scores), seed=self.seed,
                                               salt="pool")
        dm.reorder_pool(positions, scores)
        self._pool_scoring_cost = cost
        rank_zero_info(f"[soft] pool ordered {self.across_rounds.order} by {self.across_rounds.scorer} "
                       f"({cost['seconds']} s, {cost['tokens_per_second']} tok/s)")

    def icl_pool_for_round(self, r: int) -> list:
        """The bundled pool, plus (for `random+self`) the best pairs of rounds before r."""
        if self.icl != "random+self":
            return self.icl_pool
        extra = []
        for earlier in range(r):
            extra += self_examples(self.store.read_records(earlier), earlier, self.icl_self)
        return self.icl_pool + extra

    def build_requests(self, prompts: list[dict], r: int, fmt: PromptFormat,
                       pool: list | None = None) -> list[GenerationRequest]:
        pool = self.icl_pool_for_round(r) if pool is None else pool
        strategy = "fixed" if self.icl == "fixed" else "random"
        requests = []
        for p in prompts:
            examples = draw_examples(pool, self.icl_examples, seed=self.seed, round_index=r, prompt_id=p["id"],
                                     strategy=strategy)
            text = fmt.generation_prompt(self.principles, examples, p["prompt"])
            requests.append(GenerationRequest(p["id"], p["prompt"], text, [e.id for e in examples]))
        return requests

    # ---- a round's generation -----------------------------------------------------------------

    def _make_sampler(self, pl_module, dm):
        """The sampler this run uses; `auto` is resolved here, once, and the choice logged."""
        backend = resolve_sampler(self.sampler_name)
        if self.sampler_name == "auto":
            rank_zero_info(f"[soft] bootstrap.sampler=auto chose {backend} "
                           f"({'CUDA and vLLM available' if backend == 'vllm' else 'no CUDA device or no vLLM'})")
        common = {"sampling": self.sampling, "stop": PromptFormat(dm.tokenizer).stop_strings(), "seed": self.seed}
        if backend == "vllm":
            kwargs = {**common, "model_path": pl_module.source, "lora_rank": pl_module.hparams.lora_r,
                      "options": self.vllm_options, "trust_remote_code": pl_module.hparams.trust_remote_code}
            return VLLMSampler(**kwargs) if self.sampler_process == "inline" else SamplerProcess(VLLMSampler, kwargs)
        if self.sampler_process == "inline":
            return HFSampler(**common, tokenizer=dm.tokenizer, batch_size=self.hf_batch_size)
        # The child builds the model from the module's hparams, on this rank's device, in the dtype
        # training holds the weights in (bf16-true casts them; 32-true and mixed do not).
        param = next(p for p in pl_module.parameters() if p.requires_grad)
        return SamplerProcess(HFAdapterSampler, {
            **common, "module_hparams": dict(pl_module.hparams), "tokenizer_source": dm.tokenizer_source,
            "dtype": None if param.dtype == torch.float32 else str(param.dtype).removeprefix("torch."),
            "device": str(param.device), "batch_size": self.hf_batch_size,
        })

    def _generate(self, trainer, pl_module, r: int, adapter: Path | None) -> None:
        """Generate round r: every rank answers its share of the prompts in chunks appended to
        its shard (a killed run resumes with the prompts not answered yet); then rank 0 merges
        the shards, drops, scores and orders the pairs, and seals the round."""
        dm, rank, world = trainer.datamodule, trainer.global_rank, trainer.world_size
        self._engine_seconds += self.sampler.start()  # once inline; a spawned sampler after each pause()
        t0 = time.perf_counter()
        prompts = dm.prompts_for_round(r)
        icl_pool = self.icl_pool_for_round(r)
        requests = self.build_requests(prompts, r, PromptFormat(dm.tokenizer), icl_pool)
        if trainer.is_global_zero and not (self.store.root / "run.json").is_file():
            write_json_atomic(self.store.root / "run.json", self._identity(trainer, pl_module))
        shard = self.store.shard_path(r, rank, world)
        done = {rec["id"] for rec in self.store.partial_records(shard)}
        todo = [req for req in requests[rank::world] if req.id not in done]
        rank_zero_info(f"[soft] round {r}: generating {len(requests)} responses on {world} rank(s) with "
                       f"{self.sampler.name}" + (f" and adapter {adapter}" if adapter else " (base model)"))
        for i in range(0, len(todo), self.generation_chunk):
            chunk = self.sampler.generate(todo[i : i + self.generation_chunk], round_index=r, adapter=adapter,
                                          model=pl_module.model)
            self.store.append_records(shard, chunk)
            kill_point(f"generated:{r}:{i // self.generation_chunk}")
        self.sampler.pause()
        generated_now = int(trainer.strategy.reduce(torch.tensor(float(len(todo))), reduce_op="sum"))
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            merged = {}
            for k in range(world):
                merged.update((rec["id"], rec) for rec in self.store.partial_records(self.store.shard_path(r, k, world)))
            # Fields a previous attempt may have added are recomputed from scratch.
            records = [{k: v for k, v in merged[req.id].items() if k in SAMPLER_FIELDS} for req in requests]
            seconds = time.perf_counter() - t0
            dropped = self._mark_dropped(records)
            scoring = self._order_round(records, r, dm, pl_module)
            t1 = time.perf_counter()
            diagnostics = generation_diagnostics(records, encoder=dm, model=pl_module.model,
                                                 batch_size=self.score_batch_size)
            diagnostics_seconds = time.perf_counter() - t1
            for rec, prompt in zip(records, prompts):
                if "difficulty" in prompt:
                    rec["pool_difficulty"] = prompt["difficulty"]
            engine_seconds, self._engine_seconds = self._engine_seconds, 0.0
            n_tokens = sum(rec["n_tokens"] for rec in records)
            self.store.write_round(r, records, {
                "generated_now": generated_now,
                "resumed_with": len(requests) - generated_now,
                "ranks": world,
                "prompts": len(records),
                "kept": len(records) - sum(dropped.values()),
                "dropped": dropped,
                "truncated": sum(rec["finish_reason"] == "length" for rec in records),
                "tokens_generated": n_tokens,
                "sampler": {**self.sampler.describe(), "requested": self.sampler_name},
                "adapter": str(adapter) if adapter else None,
                "seed": self.seed,
                "icl": {"strategy": self.icl, "examples": self.icl_examples,
                        "pool_size": len(icl_pool), **asdict(self.icl_self)},
                "curriculum": {
                    "within_round": {**asdict(self.within_round), "scoring": scoring},
                    "across_rounds": {**asdict(self.across_rounds),
                                      "scoring": getattr(self, "_pool_scoring_cost", None)},
                },
                "pool": dm.pool_stats.as_dict(),
                "diagnostics": diagnostics,
                "timings": {"generation_seconds": round(seconds, 3),
                            "engine_start_seconds": round(engine_seconds, 3),
                            "scoring_seconds": scoring["seconds"] if scoring else 0.0,
                            "diagnostics_seconds": round(diagnostics_seconds, 3),
                            "tokens_per_second": round(n_tokens / max(seconds, 1e-9), 1)},
            })
            if world > 1:  # merged and sealed: the shards are no longer needed
                for k in range(world):
                    self.store.shard_path(r, k, world).unlink(missing_ok=True)
        trainer.strategy.barrier()

    def _mark_dropped(self, records: list[dict]) -> dict[str, int]:
        dropped: dict[str, int] = {}
        for rec in records:
            reason = drop_reason(rec["response"], self.min_response_chars)
            rec["kept"] = reason is None
            if reason:
                rec["drop_reason"] = reason
                dropped[reason] = dropped.get(reason, 0) + 1
        return dropped

    def _order_round(self, records: list[dict], r: int, dm, pl_module) -> dict | None:
        """Give every kept record its `difficulty` and its `position` in the training order."""
        kept = [rec for rec in records if rec["kept"]]
        scores, cost = None, None
        if self.within_round.scorer:
            scores, cost = curriculum.score(kept, self.within_round.scorer, encoder=dm, model=pl_module.model,
                                            batch_size=self.score_batch_size)
        order = curriculum.order_positions(scores, self.within_round.order, n=len(kept), seed=self.seed, salt=r)
        for position, i in enumerate(order):
            kept[i]["position"] = position
            kept[i]["difficulty"] = scores[i] if scores else None
        return cost

    def _record_round(self, trainer, r: int, manifest: dict, train_seconds: float | None) -> None:
        """One row of rounds.csv: counts, phase timings, train/val metrics, generation diagnostics."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        timings = manifest.get("timings", {})
        row = {
            "round": r,
            "prompts": manifest.get("prompts"),
            "kept": manifest.get("kept"),
            "tokens_generated": manifest.get("tokens_generated"),
            "generation_s": timings.get("generation_seconds"),
            "scoring_s": timings.get("scoring_seconds"),
            "diagnostics_s": timings.get("diagnostics_seconds"),
            "train_s": round(train_seconds, 2) if train_seconds is not None else None,
            "train/loss": metrics.get("train/loss_epoch"),
            **{k: v for k, v in metrics.items() if k.startswith("val/")},
            **manifest.get("diagnostics", {}),
        }
        self.summary.append(row)
        self._update_best(trainer, row)
        if trainer.is_global_zero:
            self.store.update_manifest(r, training={k: v for k, v in row.items() if k.startswith(("train", "val/"))})
            report.write_csv(self.summary, self.store.root / "rounds.csv")
            report.write_plot(self.summary, self.store.root / "rounds.png", self._monitor(trainer)[0],
                              self.best.get("round"))

    @staticmethod
    def _monitor(trainer) -> tuple[str | None, str]:
        """The metric and mode that pick the best round: those of the user's ModelCheckpoint
        (or EarlyStopping), so there is one place to configure it."""
        for cb in trainer.checkpoint_callbacks + [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]:
            if getattr(cb, "monitor", None):
                return cb.monitor, cb.mode
        return None, "max"

    def _update_best(self, trainer, row: dict) -> None:
        monitor, mode = self._monitor(trainer)
        value = row.get(monitor) if monitor else None
        if value is None:
            return
        best = self.best.get("value")
        if best is not None and not (value > best if mode == "max" else value < best):
            return
        self.best = {"round": row["round"], "monitor": monitor, "mode": mode, "value": value}
        if trainer.is_global_zero:
            history = [(r["round"], r.get(monitor)) for r in self.summary]
            self.store.save_best(row["round"], {**self.best, "history": history,
                                               "why": f"{'highest' if mode == 'max' else 'lowest'} {monitor} "
                                                      f"over rounds 0..{row['round']}"})

    def _print_summary(self) -> None:
        rank_zero_info("[soft] per-round summary (train_s includes validation)\n"
                       + report.format_table(self.summary, self.best.get("round")))



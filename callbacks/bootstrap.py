"""BootstrapCallback: turns Lightning epochs into SOFT rounds (epoch e trains round e // epochs_per_round).

It maps Lightning's hooks to the phases of soft_lightning/rounds.py and does the rank and barrier
choreography; the round store (plan, data, adapters) is the only state it keeps:

    on_fit_start        read the run plan from disk (a fresh run writes it first)
    on_train_epoch_end  a round's last epoch: save its adapter, report it, write a checkpoint
    make_round(r)       when the DataModule first needs round r's data (after the previous round's
                        checkpoints are written and a resume has restored everything): finish
                        round r-1 if a restart skipped its end, synthesize round r's new prompts
                        (if on) into the plan, generate round r, seal it
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from soft_lightning import curriculum, report, synthesis
from soft_lightning import rounds as phases
from soft_lightning import sampler as backends
from soft_lightning import zero_shot as zero_shot_eval
from soft_lightning.curriculum import Ordering
from soft_lightning.distributed import any_rank, gather_objects, sigterm_without_collectives
from soft_lightning.errors import ConfigError
from soft_lightning.faults import kill_point
from soft_lightning.filters import FilterSettings
from soft_lightning.plan import plan_to_write, run_identity
from soft_lightning.prompts import IclStrategy, SelfExamples, load_checks, load_icl_pool, load_principles
from soft_lightning.sampler import AdapterSync, SamplerName, SamplerProcessMode, SamplingConfig, VLLMOptions
from soft_lightning.sampler_factory import make_sampler
from soft_lightning.store import RoundStore
from soft_lightning.synthesis import PromptSynthesis
from soft_lightning.zero_shot import ZeroShot


class BootstrapCallback(L.Callback):
    """Runs Step-On-Feet Tuning: generate a round with the current adapter, train on it, repeat.

    Args:
        rounds: bootstrapping rounds (each generates fresh data and trains on it); raise it when
            resuming a finished run to continue it with fresh prompts.
        epochs_per_round: training epochs on each round's data.
        out_dir: the round store (`plan.json`, `round_<r>/`, `best/`, `checkpoints/`, logs).
        sampler: `vllm` (one engine per run), `hf` (transformers generate) or `auto`: vllm where
            it imports (its CPU build included), else hf.
        adapter_sync: how the round's adapter reaches the sampler: `lora` on top of the base,
            `merged` folded into full-precision base weights (base-model speed), `auto` (merged
            unless the hf backend on a GPU has no room for the copy; see sampler.resolve_adapter_sync).
        sampler_process: `inline` runs the sampler in the training process; `spawn` in a child
            process that exits after each round, so all its memory returns to the OS.
        principles: JSON {preamble, principles, checks?} or a text file; `default` and `rules` (a set
            whose adherence a checker measures: soft_lightning/adherence.py) are bundled.
        icl_pool: JSONL of {id, prompt, response} exemplars; `default` and `rules` are bundled.
        icl: how each prompt's in-context examples are chosen (see prompts.IclStrategy).
        icl_examples: in-context examples per prompt.
        icl_self: for `icl: random+self`, what each finished round adds to the pool.
        within_round: scorer and order of each round's training data (SOFT+: perplexity,
            easy_to_hard).
        across_rounds: scorer and order that split the prompt pool over rounds (a prompt-only
            scorer: prompt_perplexity or prompt_length); scored once, into the run plan.
        score_batch_size: sequences per forward pass when scoring and diagnosing.
        seed: drives the pool order, ICL draws, orders and sampling (same seed, same data).
        sampling: temperature, top_p, max_new_tokens.
        vllm: engine settings for the vLLM backend.
        hf_batch_tokens: the hf backend's batches hold this many tokens (rows x (prompt + new tokens)).
        filters: which responses are dropped before training (see filters.FilterSettings).
        prompt_synthesis: the model writes some of each round's prompts itself (off unless
            `per_round` > 0; see synthesis.PromptSynthesis).
        generation_chunk: prompts per sampler call; each chunk is on disk before the next starts.
        zero_shot: held-out prompts the model answers zero-shot after every round (and the base
            model at the start), checked against the principles: `val/adherence` (see zero_shot.py).
    """

    def __init__(
        self,
        rounds: PositiveInt = 3,
        epochs_per_round: PositiveInt = 1,
        out_dir: str = "runs/soft",
        sampler: SamplerName = "vllm",
        adapter_sync: AdapterSync = "auto",
        sampler_process: SamplerProcessMode = "inline",
        principles: str = "default",
        icl_pool: str = "default",
        icl: IclStrategy = "random",
        icl_examples: int = 3,
        icl_self: SelfExamples = SelfExamples(),
        within_round: Ordering = Ordering(),
        across_rounds: Ordering = Ordering(),
        score_batch_size: PositiveInt = 8,
        seed: int = 0,
        sampling: SamplingConfig = SamplingConfig(),
        vllm: VLLMOptions = VLLMOptions(),
        hf_batch_tokens: PositiveInt = 16384,
        filters: FilterSettings = FilterSettings(),
        prompt_synthesis: PromptSynthesis = PromptSynthesis(),
        generation_chunk: PositiveInt = 64,
        zero_shot: ZeroShot = ZeroShot(),
    ):
        backends.check_sampler_settings(sampler, sampler_process, vllm)
        curriculum.check_ordering(within_round, "bootstrap.within_round", prompts_only=False)
        curriculum.check_ordering(across_rounds, "bootstrap.across_rounds", prompts_only=True)
        self.rounds, self.epochs_per_round, self.store, self.seed = rounds, epochs_per_round, RoundStore(out_dir), seed
        self.sampler_name, self.sampler_process, self.vllm_options = sampler, sampler_process, vllm
        self.sampling, self.hf_batch_tokens, self.generation_chunk = sampling, hf_batch_tokens, generation_chunk
        self.within_round, self.across_rounds, self.score_batch_size = within_round, across_rounds, score_batch_size
        self.filters, self.adapter_sync, self.sampler, self.plan = filters, adapter_sync, None, None
        # Small files, read now so a missing or malformed one fails before any model loads.
        self.icl = phases.IclSettings(load_principles(principles), load_icl_pool(icl_pool), icl, icl_examples,
                                      icl_self, seed)
        self.checks, self.zero_shot = load_checks(principles), zero_shot
        if zero_shot.prompts and self.checks is None:
            raise ConfigError(f"bootstrap.zero_shot.prompts needs principles a rule can check, but {principles!r} has "
                              "no `checks` section; use bootstrap.principles rules or set zero_shot.prompts null.")
        self.zero_shot_prompts = zero_shot_eval.load_prompts(zero_shot) if zero_shot.prompts else []
        self.prompt_synthesis = prompt_synthesis
        self.seed_tasks = synthesis.load_seed_tasks(prompt_synthesis.seed_tasks) if prompt_synthesis.per_round else []
        self.resume_requested: bool | None = None  # the CLI sets it from --ckpt_path (None: not known)
        self._train_started: float | None = None

    # ---- hooks ---------------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        sigterm_without_collectives(trainer)
        backends.check_sampler_for_run(self.sampler_name, self.sampler_process, self.vllm_options,
                                       pl_module.hparams.lora_r, trainer.world_size,
                                       sharded=isinstance(trainer.strategy, FSDPStrategy))
        if self.resume_requested is not None:
            self.store.claim(run_identity(trainer.datamodule, pl_module, self), self.resume_requested,
                             lock=trainer.is_global_zero)
        trainer.datamodule.make_round = lambda r: self._make_round(trainer, pl_module, r)
        # The LR schedule's length: rounds x the optimizer steps a full round of prompts takes.
        pl_module.schedule_steps = self.rounds * self._round_steps(trainer, trainer.datamodule.full_round_batches())

    def on_fit_start(self, trainer, pl_module):
        if self.resume_requested is None:  # not started from the CLI: Lightning has named the checkpoint
            self.resume_requested = trainer.ckpt_path is not None
            self.store.claim(run_identity(trainer.datamodule, pl_module, self), self.resume_requested,
                             lock=trainer.is_global_zero)
        self.plan = self._read_plan(trainer, pl_module)
        dm = trainer.datamodule
        self.sampler = self.sampler or make_sampler(  # its engine starts with the first generation
            self.sampler_name, self.sampler_process, module=pl_module, tokenizer=dm.encoder.tokenizer,
            tokenizer_source=dm.tokenizer_source, sampling=self.sampling, seed=self.seed,
            stop=dm.encoder.format.stop_strings(), vllm=self.vllm_options, hf_batch_tokens=self.hf_batch_tokens,
            adapter_sync=self.adapter_sync, ranks=(trainer.global_rank, trainer.local_rank, trainer.world_size))

        if self.zero_shot_prompts and not self.store.zero_shot_path("base").is_file():
            start = pl_module.hparams.adapter
            self._zero_shot(trainer, pl_module, "base", Path(start) if start else None)

    def on_train_start(self, trainer, pl_module):
        loop = trainer.fit_loop.epoch_loop
        if loop.restarted_on_train_batch_end and loop.batch_progress.is_last_batch:
            # The checkpoint was taken after an epoch's last batch, before its end. Lightning goes
            # on to the next epoch but counts that epoch's batches as done in it whenever the next
            # epoch is longer (it assumes epochs of equal length; rounds are not): the next epoch
            # starts afresh instead, with its start hooks.
            loop.restarting = False
            loop.reset_restart_stage()
            loop._batches_that_stepped += 1  # (the step before the save, as Lightning's restart counts it)
            trainer.fit_loop.reset_restart_stage()
        elif trainer.ckpt_path is not None:  # a resumed round keeps the LR schedule position it had
            pl_module.start_round(self._round_steps(trainer), resumed=True)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch % self.epochs_per_round == 0:
            self._train_started = time.perf_counter()
            pl_module.start_round(self._round_steps(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        kill_point(f"train_step:{trainer.global_step}")
        if any_rank(trainer):  # a preemption that reached one rank stops them all, after the same step
            raise SIGTERMException()

    def on_validation_epoch_end(self, trainer, pl_module):
        """A round's last validation: its zero-shot adherence, logged for the collapse guard."""
        if (not self.zero_shot_prompts or trainer.sanity_checking or trainer.state.fn != "fit"
                or (trainer.current_epoch + 1) % self.epochs_per_round):
            return
        r = trainer.current_epoch // self.epochs_per_round
        self._save_adapter(trainer, pl_module, r)  # the sampler reads it from disk
        with torch.inference_mode(False):
            result = self._zero_shot(trainer, pl_module, r, self.store.adapter_dir(r))
        for name, value in zero_shot_eval.metrics(result).items():
            pl_module.log(name, value, prog_bar=name == "val/adherence")

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):  # preempted: the next start resumes from here
            trainer.save_checkpoint(self.store.preempted_checkpoint, weights_only=False)

    def on_train_epoch_end(self, trainer, pl_module):
        if (trainer.current_epoch + 1) % self.epochs_per_round == 0:
            r = trainer.current_epoch // self.epochs_per_round
            self._finish_round(trainer, pl_module, r)
            # On disk before the next round is generated, whatever the ModelCheckpoint settings.
            trainer.save_checkpoint(self.store.round_end_checkpoint, weights_only=False)
            kill_point(f"round_end_saved:{r}")

    def on_train_end(self, trainer, pl_module):  # the last round, when a resume began after its last batch
        self._finish_round(trainer, pl_module, trainer.current_epoch // self.epochs_per_round - 1, if_skipped=True)

    def on_fit_end(self, trainer, pl_module):
        base = self.store.read_zero_shot("base")
        rank_zero_info("[soft] per-round summary (train_s includes validation)\n"
                       + report.format_table(report.rows(self.store), self.store.best_round())
                       + (f"\nbase model: zero-shot adherence {zero_shot_eval.summary(base)}" if base else ""))

    def teardown(self, trainer, pl_module, stage):
        if self.sampler is not None:
            self.sampler.close()
        self.store.release()

    # ---- the plan and the rounds ----------------------------------------------------------------

    def _read_plan(self, trainer, pl_module):
        """The plan on disk (a fresh run writes it, a resume with more rounds extends it). Every rank
        reads it before rank 0 may write, so all agree on the scoring's collectives; all read the result."""
        trainer.strategy.barrier()
        dm, cost = trainer.datamodule, {}
        order = curriculum.pool_order(self.across_rounds, seed=self.seed, encoder=dm.encoder, model=pl_module.model,
                                      batch_size=self.score_batch_size, strategy=trainer.strategy, cost=cost)
        plan = self.store.read_plan()
        new = plan_to_write(plan, identity=lambda: run_identity(dm, pl_module, self), rounds=self.rounds,
                            per_round=dm.file_per_round, draw=dm.draw_prompts, pool_stats=dm.pool_stats,
                            order=order if self.across_rounds.scorer else None, cost=cost)
        if new is not None:
            if trainer.is_global_zero:
                self.store.write_plan(new)
            trainer.strategy.barrier()
            rank_zero_info(f"[soft] plan {'extended to' if plan else 'written for'} {self.rounds} rounds")
        return self.store.read_plan()

    def _round_steps(self, trainer, batches: int | None = None) -> int:
        """Optimizer steps of a round of `batches` per epoch (default: the current round's)."""
        batches = trainer.num_training_batches if batches is None else batches
        return self.epochs_per_round * math.ceil(batches / trainer.accumulate_grad_batches)

    def _make_round(self, trainer, pl_module, r: int) -> None:
        """Finish round r-1 if a restart skipped its end; then every rank answers its share of
        round r into its own shard, merges the shards, filters, and takes part in scoring and
        diagnosing; rank 0 seals the round."""
        dm, strategy, rank, world = trainer.datamodule, trainer.strategy, trainer.global_rank, trainer.world_size
        self._finish_round(trainer, pl_module, r - 1, if_skipped=True)
        start = pl_module.hparams.adapter  # the adapter the run started from, if any
        adapter = self.store.adapter_dir(r - 1) if r > 0 else (Path(start) if start else None)
        engine_start = self.sampler.start()  # once inline (0 s after); a spawned sampler after each pause()
        self._synthesize(trainer, pl_module, r, adapter)
        t0 = time.perf_counter()
        prompts, pool = self.plan.prompts(r), phases.icl_pool(self.icl, self.store, r)
        requests = phases.build_requests(prompts, r, self.icl, dm.encoder.format, pool)
        rank_zero_info(f"[soft] round {r}: generating {len(requests)} responses on {world} rank(s) with "
                       f"{self.sampler.name}" + (f" and adapter {adapter}" if adapter else " (base model)"))
        generated, shares = phases.generate_shard(
            self.sampler, requests, self.store, r=r, rank=rank, world=world, chunk=self.generation_chunk,
            adapter=adapter, model=pl_module.model, strategy=strategy, stop=lambda: trainer.received_sigterm)
        self.sampler.pause()
        counts = gather_objects(strategy, (generated, trainer.received_sigterm))
        if any(stopped for _, stopped in counts):  # preempted: the chunks written so far are kept
            raise SIGTERMException()
        generated = sum(n for n, _ in counts)
        seconds = {"generation": time.perf_counter() - t0, "engine_start": engine_start}
        records, sampler = phases.merge_shards(self.store, r, shares, requests, prompts), self.sampler.describe()
        dropped = phases.filter_records(records, self.filters, pool)
        phases.score_and_seal(self.store, r, records, shares, ordering=self.within_round, across=self.across_rounds,
                              seed=self.seed, encoder=dm.encoder, model=pl_module.model, strategy=strategy,
                              checks=self.checks,
                              batch_size=self.score_batch_size, write=trainer.is_global_zero, seconds=seconds,
                              requests=requests, generated=generated, ranks=world, dropped=dropped, pool=self.plan.pool,
                              sampler={**sampler, "requested": self.sampler_name},
                              numerics=pl_module.numerics.record(pl_module.model, sampler),
                              adapter=str(adapter) if adapter else None, icl=self.icl.describe(len(pool)),
                              **({"synthesis": self.plan.synthesized(r)} if self.prompt_synthesis.per_round else {}))
        strategy.barrier()

    def _synthesize(self, trainer, pl_module, r: int, adapter: Path | None) -> None:
        """Round r's synthesized prompts into the plan, once: a resume finds them there. Every
        rank answers its share of the requests and computes the same plan; rank 0 writes it."""
        if not self.prompt_synthesis.per_round or self.plan.synthesized(r) is not None:
            return
        dm = trainer.datamodule

        def generate(requests, sampling, description):
            return phases.generate_everywhere(self.sampler, requests, r=r, strategy=trainer.strategy, adapter=adapter,
                                              model=pl_module.model, sampling=sampling, description=description)

        plan = synthesis.synthesize_round(self.plan, r, self.prompt_synthesis, self.seed_tasks, fmt=dm.encoder.format,
                                          too_long=dm.too_long, generate=generate, seed=self.seed)
        if trainer.is_global_zero:
            self.store.write_plan(plan)
        trainer.strategy.barrier()
        kill_point(f"synthesized:{r}")
        self.plan = self.store.read_plan()
        stats = self.plan.synthesized(r)
        rank_zero_info(f"[soft] round {r}: the model wrote {stats['kept']} new prompts ({stats['candidates']} "
                       f"candidates, dropped {stats['dropped']}); the pool now holds {stats['pool_size']}")

    def _zero_shot(self, trainer, pl_module, r: int | str, adapter: Path | None) -> dict:
        """Greedy zero-shot answers to the held-out prompts (split over the ranks), checked against
        the principles; rank 0 writes them to the store."""
        def generate(requests, sampling):
            return phases.generate_everywhere(self.sampler, requests, r=0 if r == "base" else r, adapter=adapter,
                                              strategy=trainer.strategy, model=pl_module.model, sampling=sampling,
                                              description="zero-shot answers")

        engine_start = self.sampler.start()  # the run's first generation: started and warmed outside the timing
        result = zero_shot_eval.measure(generate, self.zero_shot_prompts, trainer.datamodule.encoder.format,
                                        self.checks, self.zero_shot)
        result["engine_start_seconds"] = round(engine_start, 3)
        self.sampler.pause()
        if trainer.is_global_zero:
            self.store.write_zero_shot(r, result)
        rank_zero_info(f"[soft] {'base model' if r == 'base' else f'round {r}'}: zero-shot adherence "
                       + zero_shot_eval.summary(result))
        return result

    def _save_adapter(self, trainer, pl_module, r: int) -> None:
        gathered = pl_module.gather_adapter()  # every rank: under FSDP the shards are gathered
        if trainer.is_global_zero:
            self.store.save_adapter(r, lambda directory: pl_module.save_adapter(directory, gathered))
        trainer.strategy.barrier()

    def _finish_round(self, trainer, pl_module, r: int, if_skipped: bool = False) -> None:
        """Save round r's adapter, then mark the round trained with its metrics, and report.
        `if_skipped`: only if a resume after the round's last batch skipped its end (Lightning does)."""
        if if_skipped and (r < 0 or trainer.strategy.broadcast(self.store.is_trained(r))):
            return
        kill_point(f"round_end:{r}")
        self._save_adapter(trainer, pl_module, r)
        metrics = trainer.callback_metrics  # every rank: reading them syncs the sync_dist ones
        if trainer.is_global_zero:
            kill_point(f"adapter_saved:{r}")
            seconds = time.perf_counter() - self._train_started if self._train_started else None
            diagnostics = report.mark_trained(self.store, r, metrics, seconds, report.monitor(trainer),
                                              pl_module.mc_results)
            for logger in trainer.loggers:
                logger.log_metrics(diagnostics, step=trainer.global_step)
        self._train_started = None
        trainer.strategy.barrier()

"""BootstrapCallback: turns Lightning epochs into SOFT rounds (epoch e trains round e // epochs_per_round).

It builds the run (soft_lightning/run.py: settings, round store, plan, sampler) from its
arguments and maps Lightning's hooks to the run's phases; the round store on disk is the only
state that outlives a process:

    on_fit_start        read the run plan from disk (a fresh run writes it first)
    on_train_epoch_end  a round's last epoch: save its adapter, report it, write a checkpoint
    run.make_round(r)   called by the DataModule when it first needs round r's data (after the
                        previous round's checkpoints are written and a resume has restored
                        everything): finish round r-1 if a restart skipped its end, synthesize
                        round r's new prompts (if on) into the plan, generate round r, seal it
"""

from __future__ import annotations

import time

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from soft_lightning import curriculum, report, synthesis
from soft_lightning import rounds as phases
from soft_lightning import sampler as backends
from soft_lightning import zero_shot as zero_shot_eval
from soft_lightning.curriculum import Ordering
from soft_lightning.distributed import any_rank, sigterm_without_collectives
from soft_lightning.errors import ConfigError
from soft_lightning.faults import kill_point
from soft_lightning.filters import FilterSettings
from soft_lightning.prompts import IclStrategy, SelfExamples, load_checks, load_icl_pool, load_principles
from soft_lightning.run import SoftRun
from soft_lightning.sampler import (
    AdapterSync,
    SamplerName,
    SamplerProcessMode,
    SamplingConfig,
    VLLMOptions,
    make_sampler,
)
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
        icl_examples: NonNegativeInt = 3,
        icl_self: SelfExamples = SelfExamples(),
        within_round: Ordering = Ordering(),
        across_rounds: Ordering = Ordering(),
        score_batch_size: PositiveInt = 8,
        seed: NonNegativeInt = 0,
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
        # Small files, read now so a missing or malformed one fails before any model loads.
        icl_settings = phases.IclSettings(load_principles(principles), load_icl_pool(icl_pool), icl, icl_examples,
                                          icl_self, seed)
        checks = load_checks(principles)
        if zero_shot.prompts and checks is None:
            raise ConfigError(f"bootstrap.zero_shot.prompts needs principles a rule can check, but {principles!r} has "
                              "no `checks` section; use bootstrap.principles rules or set zero_shot.prompts null.")
        self.run = SoftRun(
            store=RoundStore(out_dir), rounds=rounds, epochs_per_round=epochs_per_round, seed=seed,
            sampler_name=sampler, icl=icl_settings,
            checks=checks, within_round=within_round, across_rounds=across_rounds, score_batch_size=score_batch_size,
            filters=filters, generation_chunk=generation_chunk, zero_shot=zero_shot,
            zero_shot_prompts=zero_shot_eval.load_prompts(zero_shot) if zero_shot.prompts else [],
            prompt_synthesis=prompt_synthesis,
            seed_tasks=synthesis.load_seed_tasks(prompt_synthesis.seed_tasks) if prompt_synthesis.per_round else [])
        self.sampler_process, self.vllm_options, self.adapter_sync = sampler_process, vllm, adapter_sync
        self.sampling, self.hf_batch_tokens = sampling, hf_batch_tokens
        self.resume_requested: bool | None = None  # the CLI sets it from --ckpt_path (None: not known)

    # ---- hooks ---------------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        sigterm_without_collectives(trainer)
        backends.check_sampler_for_run(self.run.sampler_name, self.sampler_process, self.vllm_options,
                                       pl_module.hparams.lora_r, trainer.world_size,
                                       sharded=isinstance(trainer.strategy, FSDPStrategy))
        if self.resume_requested is not None:
            self.run.store.claim(self.run.identity(trainer), self.resume_requested, lock=trainer.is_global_zero)
        # The LR schedule's length: rounds x the optimizer steps a full round of prompts takes.
        pl_module.schedule_steps = self.run.rounds * self.run.round_steps(trainer,
                                                                          trainer.datamodule.full_round_batches())

    def on_fit_start(self, trainer, pl_module):
        run, dm = self.run, trainer.datamodule
        if self.resume_requested is None:  # not started from the CLI: Lightning has named the checkpoint
            self.resume_requested = trainer.ckpt_path is not None
            run.store.claim(run.identity(trainer), self.resume_requested, lock=trainer.is_global_zero)
        run.read_plan(trainer)
        run.sampler = run.sampler or make_sampler(  # its engine starts with the first generation
            run.sampler_name, self.sampler_process, module=pl_module, tokenizer=dm.encoder.tokenizer,
            sampling=self.sampling, seed=run.seed,
            stop=dm.encoder.format.stop_strings(), vllm=self.vllm_options, hf_batch_tokens=self.hf_batch_tokens,
            adapter_sync=self.adapter_sync, ranks=(trainer.global_rank, trainer.local_rank, trainer.world_size))
        if run.zero_shot_prompts and not run.store.zero_shot_path("base").is_file():
            run.zero_shot_answers(trainer, "base", run.start_adapter(trainer))

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
            if trainer.current_epoch % self.run.epochs_per_round == 0:
                return  # (current_epoch is the next one) it starts a round: its start hook starts the schedule
        if trainer.ckpt_path is not None:  # a resumed round keeps the LR schedule position it had
            pl_module.start_round(self.run.round_steps(trainer), resumed=True)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch % self.run.epochs_per_round == 0:
            self.run.train_started = time.perf_counter()
            pl_module.start_round(self.run.round_steps(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        kill_point(f"train_step:{trainer.global_step}")
        if any_rank(trainer):  # a preemption that reached one rank stops them all, after the same step
            raise SIGTERMException()

    def on_validation_epoch_end(self, trainer, pl_module):
        """A round's last validation: its zero-shot adherence, logged for the collapse guard."""
        run = self.run
        if (not run.zero_shot_prompts or trainer.sanity_checking or trainer.state.fn != "fit"
                or (trainer.current_epoch + 1) % run.epochs_per_round):
            return
        r = trainer.current_epoch // run.epochs_per_round
        run.save_adapter(trainer, r)  # the sampler reads it from disk
        with torch.inference_mode(False):
            result = run.zero_shot_answers(trainer, r, run.store.adapter_dir(r))
        for name, value in zero_shot_eval.metrics(result).items():
            pl_module.log(name, value, prog_bar=name == "val/adherence")

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):  # preempted: the next start resumes from here
            trainer.save_checkpoint(self.run.store.preempted_checkpoint, weights_only=False)

    def on_train_epoch_end(self, trainer, pl_module):
        if (trainer.current_epoch + 1) % self.run.epochs_per_round == 0:
            r = trainer.current_epoch // self.run.epochs_per_round
            self.run.finish_round(trainer, r)
            # On disk before the next round is generated, whatever the ModelCheckpoint settings.
            trainer.save_checkpoint(self.run.store.round_end_checkpoint, weights_only=False)
            kill_point(f"round_end_saved:{r}")

    def on_train_end(self, trainer, pl_module):  # the last round, when a resume began after its last batch
        self.run.finish_round(trainer, trainer.current_epoch // self.run.epochs_per_round - 1, if_skipped=True)

    def on_fit_end(self, trainer, pl_module):
        store = self.run.store
        base = store.read_zero_shot("base")
        rank_zero_info("[soft] per-round summary (train_s includes validation)\n"
                       + report.format_table(report.rows(store), store.best_round())
                       + (f"\nbase model: zero-shot adherence {zero_shot_eval.summary(base)}" if base else ""))

    def teardown(self, trainer, pl_module, stage):
        if self.run.sampler is not None:
            self.run.sampler.close()
        self.run.store.release()

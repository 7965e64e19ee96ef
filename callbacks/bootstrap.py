"""BootstrapCallback: turns Lightning epochs into SOFT rounds (epoch e trains round e // epochs_per_round).

It builds the run (soft_lightning/rounds/run.py: settings, round store, plan, sampler) from its
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
from pathlib import Path

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from soft_lightning.models.source import checkpoint_bytes, local_config
from soft_lightning.rounds import preflight, synthesis, table
from soft_lightning.rounds.curriculum import Ordering, check_ordering
from soft_lightning.rounds.filters import FilterSettings
from soft_lightning.rounds.icl import IclSettings, Principles, load_icl_pool
from soft_lightning.rounds.run import SoftRun
from soft_lightning.rounds.store import RoundStore
from soft_lightning.rounds.synthesis import PromptSynthesis
from soft_lightning.sampler import (
    ROUNDS,
    SamplerSettings,
    SamplingSettings,
    check_sampler_for_run,
    check_sampler_settings,
    resolve_backend,
)
from soft_lightning.signals import zero_shot
from soft_lightning.signals.zero_shot import ZeroShot
from soft_lightning.training.module import SoftModule
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.faults import kill_point

CHECKPOINT_MARK = "soft_lightning"  # our key in every checkpoint (BootstrapCallback.on_save_checkpoint)


def resumable_checkpoint(folders: list[Path]) -> Path | None:
    """What `--ckpt_path last` resumes: the newest `last*.ckpt` in `folders` (Lightning's own rule)
    that was not saved after an epoch's last batch (None: none, the run starts from its store)."""
    import torch

    found = sorted((path for folder in folders for path in folder.glob("last*.ckpt")), key=lambda p: -p.stat().st_mtime)
    for path in found:
        mark = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(CHECKPOINT_MARK, {})
        if not mark.get("after_last_batch"):
            return path
    return None


class BootstrapCallback(L.Callback):
    """Runs Step-On-Feet Tuning: generate a round with the current adapter, train on it, repeat.

    Args:
        rounds: bootstrapping rounds (each generates fresh data and trains on it); raise it when
            resuming a finished run to continue it with fresh prompts.
        epochs_per_round: training epochs on each round's data.
        regenerate: false: rounds after round 0 train on round 0's data again instead of generating
            fresh data (the control that tells bootstrapping from more optimizer steps; the plan
            and the store say so: every round's slice is round 0's, its manifest `reused_from: 0`).
        out_dir: the round store (`plan.json`, `round_<r>/`, `best/`, `checkpoints/`, logs).
        seed: drives the pool order, ICL draws, orders and sampling (same seed, same data).
        sampler: what generates the answers (see sampler.SamplerSettings).
        sampling: how a round's answers are sampled: temperature, top_p, max_new_tokens.
        icl: the principles and in-context examples each prompt is answered with (see rounds.icl.IclSettings).
        within_round: scorer and order of each round's training data (SOFT+: perplexity,
            easy_to_hard).
        across_rounds: scorer and order that split the prompt pool over rounds (a prompt-only
            scorer: prompt_perplexity or prompt_length); scored once, into the run plan.
        score_batch_size: sequences per forward pass when scoring and diagnosing.
        filters: which responses are dropped before training (see filters.FilterSettings).
        prompt_synthesis: the model writes some of each round's prompts itself (off unless
            `per_round` > 0; see synthesis.PromptSynthesis).
        generation_chunk: prompts per sampler call; each chunk is on disk before the next starts.
        zero_shot: held-out prompts the model answers zero-shot after every round (and the base
            model at the start), scored by every quality signal: `val/aligned`, the collapse guard's
            monitor, and the rest (see signals/zero_shot.py).
    """

    def __init__(
        self,
        rounds: PositiveInt = 3,
        epochs_per_round: PositiveInt = 1,
        regenerate: bool = True,
        out_dir: str = "runs/soft",
        seed: NonNegativeInt = 0,
        sampler: SamplerSettings = SamplerSettings(),
        sampling: SamplingSettings = ROUNDS,
        icl: IclSettings = IclSettings(),
        within_round: Ordering = Ordering(),
        across_rounds: Ordering = Ordering(),
        score_batch_size: PositiveInt = 8,
        filters: FilterSettings = FilterSettings(),
        prompt_synthesis: PromptSynthesis = PromptSynthesis(),
        generation_chunk: PositiveInt = 64,
        zero_shot: ZeroShot = ZeroShot(),
    ):
        settings = {k: v for k, v in locals().items() if k not in ("self", "__class__")}  # for the run identity
        check_sampler_settings(sampler)
        check_ordering(within_round, "bootstrap.within_round", prompts_only=False)
        check_ordering(across_rounds, "bootstrap.across_rounds", prompts_only=True)
        # Small files, read now so a missing or malformed one fails before any model loads.
        principles, examples = Principles.load(icl.principles), load_icl_pool(icl.pool)
        preflight.check_icl_pool(examples, icl.examples, icl.pool)
        if not regenerate and prompt_synthesis.per_round:
            raise ConfigError("bootstrap.regenerate=false reuses round 0's data, so there is nothing for "
                              f"bootstrap.prompt_synthesis.per_round={prompt_synthesis.per_round} to add prompts to; "
                              "set it to 0 or regenerate to true.")
        self.run = SoftRun(
            settings=settings, store=RoundStore(out_dir), rounds=rounds, epochs_per_round=epochs_per_round,
            regenerate=regenerate, seed=seed,
            sampler_settings=sampler, sampling=sampling, icl=icl, principles=principles, examples=examples,
            within_round=within_round, across_rounds=across_rounds, score_batch_size=score_batch_size,
            filters=filters, generation_chunk=generation_chunk, zero_shot=zero_shot,
            zero_shot_prompts=zero_shot.load_prompts() if zero_shot.prompts else [],
            prompt_synthesis=prompt_synthesis,
            seed_tasks=synthesis.load_seed_tasks(prompt_synthesis.seed_tasks) if prompt_synthesis.per_round else [])
        self.resume_requested: bool | None = None  # the CLI sets it from --ckpt_path (None: not known)
        self.after_last_batch = False  # between an epoch's last batch and its validation

    # ---- hooks ---------------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        def engine_bytes():  # asked for only with vLLM sleep mode
            return checkpoint_bytes(pl_module.source(), pl_module.resolve_numerics().dtype)

        check_sampler_for_run(self.run.sampler_settings, pl_module.hparams.lora_r, trainer.world_size,
                              sharded=isinstance(trainer.strategy, FSDPStrategy), engine_bytes=engine_bytes,
                              ranks_here=trainer.num_devices)
        self.preflight(trainer, pl_module)
        if self.resume_requested is not None:
            self.run.store.claim(self.run.identity(trainer), self.resume_requested, lock=trainer.is_global_zero)
        # The LR schedule's length: rounds x the optimizer steps a full round of prompts takes.
        pl_module.schedule_steps = self.run.rounds * self.run.round_steps(trainer,
                                                                          trainer.datamodule.full_round_batches())

    def preflight(self, trainer, pl_module) -> None:
        """What the model, the engine and the data would otherwise refuse after loading (preflight.py)."""
        run, hp = self.run, pl_module.hparams
        source, dtype = pl_module.source(), pl_module.resolve_numerics().dtype
        config, backend, options = local_config(source), resolve_backend(run.sampler_settings.backend), \
            run.sampler_settings.vllm
        if backend == "vllm":
            preflight.check_kv_cache(options, config, dtype if options.dtype == "auto" else options.dtype)
            preflight.check_parallel_size(options, trainer.world_size, trainer.strategy.root_device.type)
        context, key = preflight.sampler_context(backend, options, config)
        preflight.check_context(trainer.datamodule.encoder, run.principles.text, run.examples, run.icl.examples,
                                trainer.datamodule.max_prompt_tokens, run.sampling.max_new_tokens, context, key)
        preflight.check_target_modules(hp.target_modules, source, hp.trust_remote_code)
        if not logs_its_own_validation(pl_module):
            preflight.check_monitors(trainer.callbacks, zero_shot=bool(run.zero_shot_prompts),
                                     judge=run.zero_shot.judge.model is not None,
                                     multiple_choice=trainer.datamodule.val_path is not None)

    def on_fit_start(self, trainer, pl_module):
        run = self.run
        if self.resume_requested is None:  # not started from the CLI: Lightning has named the checkpoint
            self.resume_requested = trainer.ckpt_path is not None
            run.store.claim(run.identity(trainer), self.resume_requested, lock=trainer.is_global_zero)
        run.read_plan(trainer)
        run.open_sampler(trainer)
        if run.zero_shot_prompts and not run.store.zero_shot_path("base").is_file():
            run.zero_shot_answers(trainer, "base", run.start_adapter(trainer))

    def on_train_start(self, trainer, pl_module):
        self.run.preemption.watch(trainer)  # (a resume whose rounds are all on disk makes none)
        if trainer.ckpt_path is not None:  # a resumed round keeps the LR schedule position it had
            pl_module.start_round(self.run.round_steps(trainer), resumed=True)

    def on_train_epoch_start(self, trainer, pl_module):
        if self.run.sampler is not None:  # training's memory back from the sampler (left up by a zero-shot)
            self.run.sampler.pause()
        r = trainer.current_epoch // self.run.epochs_per_round
        self.run.enter(f"training round {r}", "data.batch_size, data.max_length or model.gradient_checkpointing "
                                              "(memory), model.learning_rate")
        if trainer.current_epoch % self.run.epochs_per_round == 0:
            self.run.train_started = time.perf_counter()
            pl_module.start_round(self.run.round_steps(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # A checkpoint saved from here to the epoch's validation is marked (`on_save_checkpoint`).
        self.after_last_batch = batch_idx + 1 >= trainer.num_training_batches
        kill_point(f"train_step:{trainer.global_step}")
        if self.run.preemption.any_rank(trainer):  # one rank's preemption stops them all, after the same step
            raise SIGTERMException()

    def on_validation_start(self, trainer, pl_module):
        self.after_last_batch = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        """Mark a checkpoint taken after an epoch's last batch, before its end: Lightning resumes one
        into the next epoch counting the batches already done in it, right only when epochs have
        equal length, which rounds do not. `--ckpt_path last` passes them over
        (`resumable_checkpoint`); handed one directly, the run refuses it (`on_load_checkpoint`)."""
        checkpoint[CHECKPOINT_MARK] = {"after_last_batch": self.after_last_batch}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if checkpoint.get(CHECKPOINT_MARK, {}).get("after_last_batch"):
            raise ConfigError(
                f"--ckpt_path: {trainer.ckpt_path} was saved after an epoch's last batch, before the epoch ended, "
                "which Lightning cannot resume into a round of another length; pass --ckpt_path last (it picks the "
                f"newest checkpoint that resumes cleanly) or {self.run.store.round_end_checkpoint}."
            )

    def on_validation_epoch_end(self, trainer, pl_module):
        """A round's last validation: its zero-shot answers' signals, logged for the collapse guard."""
        run = self.run
        if (not run.zero_shot_prompts or trainer.sanity_checking or trainer.state.fn != "fit"
                or (trainer.current_epoch + 1) % run.epochs_per_round):
            return
        r = trainer.current_epoch // run.epochs_per_round
        run.save_adapter(trainer, r)  # the sampler reads it from disk
        with torch.inference_mode(False):
            result = run.zero_shot_answers(trainer, r, run.store.adapter_dir(r))
        for name, value in zero_shot.metrics(result).items():
            pl_module.log(name, value, prog_bar=name == "val/aligned")

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):  # preempted: the next start resumes from here
            # Stopped in a round's validation (its zero-shot scoring): a resume from here would skip
            # the round's signals; marked, `--ckpt_path last` passes it over and redoes the round.
            self.after_last_batch = self.after_last_batch or trainer.validating
            trainer.save_checkpoint(self.run.store.preempted_checkpoint, weights_only=False)
        elif not isinstance(exception, (ConfigError, KeyboardInterrupt)):  # a library's: the CLI says where
            self.run.record_error(exception, trainer.global_rank)

    def on_train_epoch_end(self, trainer, pl_module):
        self.after_last_batch = False  # (an epoch without validation ends here: its checkpoints resume cleanly)
        if (trainer.current_epoch + 1) % self.run.epochs_per_round == 0:
            r = trainer.current_epoch // self.run.epochs_per_round
            self.run.finish_round(trainer, r)
            # On disk before the next round is generated, whatever the ModelCheckpoint settings.
            trainer.save_checkpoint(self.run.store.round_end_checkpoint, weights_only=False)
            kill_point(f"round_end_saved:{r}")

    def on_train_end(self, trainer, pl_module):  # the last round, when a resume began after its validation
        self.run.finish_round(trainer, trainer.current_epoch // self.run.epochs_per_round - 1, if_skipped=True)

    def on_fit_end(self, trainer, pl_module):
        store = self.run.store
        base, rows, best = store.read_zero_shot("base"), table.rows(store), store.best_round()
        rank_zero_info("[soft] per-round summary (train_s includes validation)\n" + table.format_table(rows, best)
                       + (f"\nbase model zero-shot: {zero_shot.summary(base)}" if base else ""))
        if warning := table.below_decline(rows, best):
            rank_zero_info(f"[soft] warning: the best {warning}.")
        rank_zero_info(f"[soft] the run is in {store.root} (rounds.csv, rounds.png, best/); "
                       f"`python -m soft_lightning report {store.root}` writes {store.root / 'report.html'}")

    def teardown(self, trainer, pl_module, stage):
        if self.run.sampler is not None:
            self.run.sampler.close()
        self.run.store.release()


def logs_its_own_validation(pl_module) -> bool:
    """Whether the module is not SoftModule's validation as shipped (a subclass that overrides a
    validation hook may log any metric: the monitor check cannot know which)."""
    return not isinstance(pl_module, SoftModule) or any(
        getattr(type(pl_module), hook) is not getattr(SoftModule, hook)
        for hook in ("validation_step", "on_validation_epoch_end", "on_validation_end"))

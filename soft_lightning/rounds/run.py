"""SoftRun: one run's rounds as every rank executes them, around phases.py's plain functions.

It holds the run's settings (the `bootstrap:` section, as typed), what its files hold, its round
store, plan and sampler; the BootstrapCallback builds it and calls its methods from Lightning's
hooks, and the DataModule asks it for a round that is not in the store yet (`make_round`). Each
method runs on every rank; rank 0 writes.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from soft_lightning.models.likelihood import Forward
from soft_lightning.rounds import curriculum, phases, synthesis, table
from soft_lightning.rounds.curriculum import Ordering
from soft_lightning.rounds.filters import FilterSettings
from soft_lightning.rounds.icl import Example, IclSettings, Principles
from soft_lightning.rounds.phases import RoundFacts
from soft_lightning.rounds.plan import RunPlan, plan_to_write, run_identity
from soft_lightning.rounds.store import RoundStore
from soft_lightning.rounds.synthesis import PromptSynthesis, SeedTask
from soft_lightning.sampler import Sampler, SamplerSettings, SamplingSettings, make_sampler
from soft_lightning.signals import zero_shot
from soft_lightning.signals.zero_shot import ZeroShot
from soft_lightning.utils import memory
from soft_lightning.utils.distributed import Preemption, gather_objects
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.faults import kill_point
from soft_lightning.utils.files import write_bytes_atomic


@dataclass
class SoftRun:
    """The run's settings (see BootstrapCallback's arguments), what its files hold, and its state:
    plan and sampler. `settings` is the whole `bootstrap:` section as given (for the identity)."""

    settings: dict = field(repr=False)
    store: RoundStore
    rounds: int
    epochs_per_round: int
    regenerate: bool
    seed: int
    sampler_settings: SamplerSettings
    sampling: SamplingSettings
    icl: IclSettings
    principles: Principles
    examples: list[Example] = field(repr=False)
    within_round: Ordering
    across_rounds: Ordering
    score_batch_size: int
    filters: FilterSettings
    generation_chunk: int
    zero_shot: ZeroShot
    zero_shot_prompts: list[dict] = field(repr=False)
    prompt_synthesis: PromptSynthesis
    seed_tasks: list[SeedTask] = field(repr=False)
    sampler: Sampler | None = None
    plan: RunPlan | None = None
    train_started: float | None = field(default=None, repr=False)
    judge: Forward | None = field(default=None, repr=False)
    preemption: Preemption = field(default_factory=Preemption, repr=False)
    phase: tuple[str, str] = ("starting up (loading the model, its adapter and the data)",
                              "model.model_name_or_path, model.adapter, model.quantization or model.compute_dtype")

    @classmethod
    def of(cls, trainer) -> SoftRun:
        """The run a trainer's BootstrapCallback holds: the one place a DataModule or another
        callback reads the run's rounds from."""
        runs = [cb.run for cb in trainer.callbacks if isinstance(getattr(cb, "run", None), cls)]
        if len(runs) != 1:
            raise ConfigError(f"the trainer has {len(runs)} BootstrapCallbacks; a run reads the rounds of exactly "
                              "one (the bootstrap: section).")
        return runs[0]

    def identity(self, trainer, module=None, datamodule=None) -> dict:
        """What makes this run this run (rounds/plan.py): the model, data and bootstrap settings, and
        the number of ranks (each rank's share of a round samples with a seed of its own). Before
        `fit` attaches them, the module and datamodule are given."""
        module = trainer.lightning_module if module is None else module
        datamodule = trainer.datamodule if datamodule is None else datamodule
        return run_identity({"model": dict(module.hparams), "data": dict(datamodule.hparams),
                             "bootstrap": self.settings, "trainer": {"world_size": trainer.world_size}})

    def start_adapter(self, trainer) -> Path | None:
        start = trainer.lightning_module.hparams.adapter  # the adapter the run started from, if any
        return Path(start) if start else None

    def round_steps(self, trainer, batches: int | None = None) -> int:
        """Optimizer steps of a round of `batches` per epoch (default: the current round's)."""
        batches = trainer.num_training_batches if batches is None else batches
        return self.epochs_per_round * math.ceil(batches / trainer.accumulate_grad_batches)

    def forward(self, trainer) -> Forward:
        """Forward passes outside training: the policy model, split over the ranks; a SIGTERM on
        any rank stops the long scorings after the batch in hand, on every rank."""
        def stop() -> None:
            if self.preemption.any_rank(trainer):
                raise SIGTERMException()

        return Forward(trainer.datamodule.encoder, trainer.lightning_module.model, self.score_batch_size,
                       trainer.strategy, stop)

    def judge_forward(self, trainer) -> Forward | None:
        """A separate judge model's forward passes (signals/judge.py), loaded on the first
        zero-shot round and kept for the run; None: no judge, or the base model judges."""
        if self.judge is None:
            module = trainer.lightning_module
            self.judge = zero_shot.judge_forward(self.zero_shot.judge, self.forward(trainer), module.numerics.dtype,
                                                 str(module.device))
        return self.judge

    def read_plan(self, trainer) -> None:
        """The plan on disk (a fresh run writes it, a resume with more rounds extends it). Every rank
        reads it before rank 0 may write, so all agree on the scoring's collectives; all read the result."""
        self.enter("planning the run", "data.prompts or bootstrap.across_rounds")
        trainer.strategy.barrier()
        dm, cost = trainer.datamodule, {}
        order = curriculum.pool_order(self.across_rounds, seed=self.seed, cost=cost, **self.forward(trainer).args())
        plan = self.store.read_plan()
        new = plan_to_write(plan, identity=lambda: self.identity(trainer), rounds=self.rounds,
                            regenerate=self.regenerate,
                            per_round=dm.file_per_round, draw=dm.draw_prompts, pool_stats=dm.pool_stats,
                            order=order if self.across_rounds.scorer else None, cost=cost)
        if new is not None:
            if trainer.is_global_zero:
                self.store.write_plan(new)
            trainer.strategy.barrier()
            rank_zero_info(f"[soft] plan {'extended to' if plan else 'written for'} {self.rounds} rounds")
        self.plan = self.store.read_plan()

    def open_sampler(self, trainer) -> None:
        """Build the run's sampler over the policy being trained (its engine starts with the
        first generation)."""
        if self.sampler is None:
            encoder = trainer.datamodule.encoder
            self.sampler = make_sampler(self.sampler_settings, trainer.lightning_module.policy(),
                                        sampling=self.sampling, seed=self.seed, tokenizer=encoder.tokenizer,
                                        stop=encoder.format.stop_strings(),
                                        ranks=(trainer.global_rank, trainer.local_rank, trainer.world_size))

    def make_round(self, trainer, r: int) -> None:
        """Finish round r-1 if a restart skipped its end; then every rank answers its share of
        round r into its own shard, merges the shards, filters, and takes part in scoring and
        diagnosing; rank 0 seals the round."""
        dm, module, strategy, world = trainer.datamodule, trainer.lightning_module, trainer.strategy, trainer.world_size
        self.preemption.watch(trainer)  # (Lightning's handler is in place by now: ours replaces it)
        self.enter(f"generating round {r}", "bootstrap.sampler (its backend and vllm settings) or bootstrap.sampling")
        self.finish_round(trainer, r - 1, if_skipped=True)
        if r > 0 and not self.regenerate:
            return self.reuse_round(trainer, r)
        memory.reset_peak()
        adapter = self.store.adapter_dir(r - 1) if r > 0 else self.start_adapter(trainer)
        engine_start = self.sampler.start()  # once inline (0 s after); a spawned sampler after each pause()
        self.synthesize(trainer, r, adapter)
        t0 = time.perf_counter()
        prompts, pool = self.plan.prompts(r), phases.icl_pool(self.icl, self.examples, self.store, r)
        requests = phases.build_requests(prompts, r, self.icl, self.principles.text, dm.encoder.format, pool,
                                         self.seed)
        rank_zero_info(f"[soft] round {r}: generating {len(requests)} responses on {world} rank(s) with "
                       f"{self.sampler.name}" + (f" and adapter {adapter}" if adapter else " (base model)"))
        self.sampler.sync_weights(adapter, module.model)
        generated, shares = phases.generate_shard(
            self.sampler, requests, self.store, r=r, rank=trainer.global_rank, world=world,
            chunk=self.generation_chunk, stop=lambda: self.stop_requested(trainer))
        self.sampler.pause()
        sampler = self.sampler.describe()
        # The ranks meet here, each with its share done (or stopped): what it wrote, its seed, its time.
        counts = gather_objects(strategy, (generated, self.stop_requested(trainer), sampler["seed"],
                                           round(time.perf_counter() - t0, 3)))
        if any(stopped for _, stopped, _, _ in counts):  # preempted: the chunks written so far are kept
            raise SIGTERMException()
        seconds = {"generation": time.perf_counter() - t0, "engine_start": engine_start}
        records = phases.merge_shards(self.store, r, shares, requests, prompts)
        facts = RoundFacts(
            requests=requests, generated=sum(n for n, *_ in counts), shares=shares, ranks=world, seed=self.seed,
            seconds=seconds, dropped=phases.filter_records(records, self.filters, pool), pool=self.plan.pool,
            sampler={**sampler, "requested": self.sampler_settings.backend,
                     "seed_per_rank": [seed for *_, seed, _ in counts]},
            seconds_per_rank=[took for *_, took in counts],
            numerics=module.numerics.record(module.model, sampler), adapter=str(adapter) if adapter else None,
            icl=self.icl.describe(len(pool)), synthesis=self.plan.synthesized(r))
        self.enter(f"scoring round {r}", "bootstrap.score_batch_size or bootstrap.within_round")
        phases.score(records, facts, r=r, within=self.within_round, across=self.across_rounds,
                     checks=self.principles.checks, forward=self.forward(trainer))
        if trainer.is_global_zero:
            phases.seal(self.store, r, records, facts, dm.encoder)
        strategy.barrier()

    def reuse_round(self, trainer, r: int) -> None:
        """Round r as round 0's records again (`regenerate: false`): the same examples in the same
        order, and round 0's manifest less its training and timings, marked `reused_from: 0`."""
        if trainer.is_global_zero:
            first = self.store.read_manifest(0)
            manifest = {k: v for k, v in first.items() if k not in ("round", "data_sha256", "training", "timings")}
            self.store.write_round(r, self.store.read_records(0), {**manifest, "generated_now": 0, "reused_from": 0})
        rank_zero_info(f"[soft] round {r}: trains on round 0's data again (bootstrap.regenerate=false)")
        trainer.strategy.barrier()

    def enter(self, phase: str, keys: str) -> None:
        """What the run does now, and the settings most likely behind a failure there (the CLI's
        one sentence when a library's error escapes; the traceback goes to error.log)."""
        self.phase = (phase, keys)

    def record_error(self, error: BaseException, rank: int) -> Path | None:
        """Keep `error`'s traceback in <out_dir>/error.log (error.rank<k>.log on other ranks) and
        tag the error with the phase, for the CLI's one sentence. Nothing else is touched: what the
        store holds stays, and the run resumes after the fix where the plan allows."""
        path = self.store.root / ("error.log" if rank == 0 else f"error.rank{rank}.log")
        try:
            write_bytes_atomic(path, "".join(traceback.format_exception(error)).encode("utf-8"))
        except OSError:
            path = None
        error.soft_context = (*self.phase, path)
        return path

    def stop_requested(self, trainer) -> bool:
        """Whether this rank, or any other, was told to stop (SIGTERM). A rank that sees the signal
        leaves the store's stop flag for the others, which read it between chunks: no rank waits
        for another's chunk, and none generates more than its chunk in hand after a stop."""
        if self.preemption.received(trainer):
            self.store.request_stop(f"rank {trainer.global_rank} received SIGTERM")
            return True
        return self.store.stop_requested()

    def synthesize(self, trainer, r: int, adapter: Path | None) -> None:
        """Round r's synthesized prompts into the plan, once: a resume finds them there. Every
        rank answers its share of the requests and computes the same plan; rank 0 writes it."""
        if not self.prompt_synthesis.per_round or self.plan.synthesized(r) is not None:
            return
        dm = trainer.datamodule

        def generate(requests, sampling, description):
            return phases.generate_everywhere(self.sampler, requests, r=r, strategy=trainer.strategy,
                                              sampling=sampling, description=description)

        self.sampler.sync_weights(adapter, trainer.lightning_module.model)

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

    def zero_shot_answers(self, trainer, r: int | str, adapter: Path | None) -> dict:
        """Greedy zero-shot answers to the held-out prompts (split over the ranks), checked against
        the principles and scored by every quality signal (split over the ranks too); rank 0
        writes them to the store."""
        self.enter(f"answering the held-out prompts ({'base model' if r == 'base' else f'round {r}'})",
                   "bootstrap.zero_shot or bootstrap.sampler")
        def generate(requests, sampling):
            return phases.generate_everywhere(self.sampler, requests, r=0 if r == "base" else r,
                                              strategy=trainer.strategy, sampling=sampling,
                                              description="zero-shot answers")

        self.sampler.sync_weights(adapter, trainer.lightning_module.model)

        engine_start = self.sampler.start()  # the run's first generation: started and warmed outside the timing
        result = zero_shot.measure(generate, self.zero_shot_prompts, trainer.datamodule.encoder.format,
                                   self.principles.checks, self.zero_shot, self.forward(trainer),
                                   self.judge_forward(trainer))
        result["engine_start_seconds"] = round(engine_start, 3)
        # Not paused: the next round generates with these weights, before any training (which
        # pauses it, BootstrapCallback.on_train_epoch_start), so a spawned child or woken engine
        # serves both: one start per round instead of two.
        if trainer.is_global_zero:
            self.store.write_zero_shot(r, result)
        rank_zero_info(f"[soft] {'base model' if r == 'base' else f'round {r}'} zero-shot: "
                       + zero_shot.summary(result))
        return result

    def save_adapter(self, trainer, r: int) -> None:
        module = trainer.lightning_module
        gathered = module.gather_adapter()  # every rank: under FSDP the shards are gathered
        if trainer.is_global_zero:
            self.store.save_adapter(r, lambda directory: module.save_adapter(directory, gathered))
        trainer.strategy.barrier()

    def finish_round(self, trainer, r: int, if_skipped: bool = False) -> None:
        """Save round r's adapter, then mark the round trained with its metrics, and report.
        `if_skipped`: only if a resume skipped its end (from a checkpoint taken at the round's last
        validation, before the epoch's end)."""
        if if_skipped and (r < 0 or trainer.strategy.broadcast(self.store.is_trained(r))):
            return
        kill_point(f"round_end:{r}")
        self.save_adapter(trainer, r)
        metrics = trainer.callback_metrics  # every rank: reading them syncs the sync_dist ones
        if trainer.is_global_zero:
            kill_point(f"adapter_saved:{r}")
            seconds = time.perf_counter() - self.train_started if self.train_started else None
            diagnostics = table.mark_trained(self.store, r, metrics, seconds, table.monitor(trainer),
                                             trainer.lightning_module.mc_results, memory=memory.peak(),
                                             steps=trainer.global_step)
            for logger in trainer.loggers:
                logger.log_metrics(diagnostics, step=trainer.global_step)
        self.train_started = None
        trainer.strategy.barrier()

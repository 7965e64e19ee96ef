"""DataModule: the round store -> each round's training set, in the curriculum's order; the
multiple-choice file and the round's held-out pairs -> the validation set.

Which round an epoch trains is `trainer.current_epoch // epochs_per_round`, read when Lightning
asks for a dataloader (every epoch), so a resumed run gets its round from the restored loop
position and nothing else. The rounds come from the run among the trainer's callbacks (the
BootstrapCallback's `run`: its round store, the only one); a round that is not in the store yet
is made right then (`run.make_round`): wherever Lightning first needs a round's data, after every
state is restored and after the previous round's checkpoints are written.

The pool is read here only to check it and to draw prompts for the run plan (plan.py); which
prompts a round answers is decided once, in the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from soft_lightning.models.encoding import Encoder, TrainExample
from soft_lightning.rounds.plan import check_pool_size
from soft_lightning.rounds.pool import PromptPool
from soft_lightning.rounds.run import SoftRun
from soft_lightning.signals.multiple_choice import McFormat, McProtocol, collate_mc, read_mc, tokenize_mc
from soft_lightning.utils.assets import bundled
from soft_lightning.utils.config_types import ShareBelowOne
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.seeds import stable_seed


@dataclass
class RoundData:
    """One round's training examples (in training order) and its held-out examples."""

    round: int
    train: list[TrainExample]
    heldout: list[TrainExample]


# The setting behind each filter's drops (rounds/filters.py), for a round that keeps nothing.
DROP_SETTINGS = {
    "empty": "the model's answers were empty (its chat template or bootstrap.sampling)",
    "truncated": "bootstrap.sampling.max_new_tokens cut them off (raise it, or set bootstrap.filters.truncated=keep)",
    "too_short": "bootstrap.filters.min_chars",
    "repetitive": "the model loops (bootstrap.sampling.temperature)",
    "repeats_sentences": "bootstrap.filters.max_repeated_sentences",
    "copies_example": "bootstrap.filters.max_example_overlap",
    "echoes_prompt": "bootstrap.filters.max_prompt_overlap",
}


def nothing_to_train(r: int, manifest: dict, max_length: int) -> str:
    """Why round r has no training example, from its manifest: each drop reason with its count
    and the setting behind it, and the kept answers data.max_length left no response token of."""
    dropped = manifest.get("dropped", {})
    parts = [f"{n} {reason} ({DROP_SETTINGS.get(reason, 'bootstrap.filters')})" for reason, n in dropped.items()]
    if kept := manifest.get("kept", 0):
        parts.append(f"{kept} kept, but data.max_length={max_length} left no response token of them (raise it)")
    return (f"round {r} kept no trainable example of its {manifest.get('prompts', 0)} answers: "
            + "; ".join(parts or ["no answers"]) + ".")


class SoftDataModule(L.LightningDataModule):
    """Round store -> training set; multiple-choice file -> validation set.

    Args:
        prompts: JSONL/JSON/Parquet of {prompt, id?, harmful?}; `demo` and `rules` are bundled (null
            for `validate`, which needs none). `harmful` (true/false) labels a prompt for the
            principle checks (bootstrap.principles `rules`). A JSONL pool is read lazily: only the
            rows the rounds
            use are parsed and cleaned, so a pool of millions of prompts costs little.
        prompts_per_round: fresh prompts each round answers (rounds use disjoint slices).
        synthesized_per_round: how many of them the model writes itself (linked from
            `bootstrap.prompt_synthesis.per_round`); the rest come from `prompts`.
        allow_prompt_reuse: let rounds wrap around the pool when it is too small.
        max_prompt_tokens: prompts longer than this (in tokens) are dropped and counted.
        max_length: training sequences are cut to this many tokens (response end first).
        batch_size: training batch size (sequences per device).
        train_batches: `kept`: each epoch is one pass over the round's kept training pairs, so a
            round whose answers the filters drop trains fewer optimizer steps. `planned`: each
            epoch trains the batches a round with every prompt kept would (the LR schedule's
            length), cycling the kept pairs in their order: rounds and arms then train the same
            optimizer steps whatever the filters drop (a comparison's steps matched in fact).
        val_path: multiple-choice JSONL {question, choices, label}; `demo` is the bundled set,
            null disables it.
        val_limit: score only the first N validation items (quick runs).
        val_format: `chat` scores each choice as the answer in the training chat format; `qa`
            uses the plain `Q: {question}\\nA: {choice}` format of common harnesses.
        val_protocol: how an item is scored: `likelihood` (each choice as the answer), `true_false`
            (each choice judged true or false), `ab` (two choices compared as responses A and B,
            in both orders); see mc.McProtocol.
        val_batch_items: validation items per batch (all choices of an item stay together).
        val_holdout: share of each round's kept pairs held out of training for `val/loss`.
        num_workers: dataloader worker processes.
        rounds, epochs_per_round, seed, regenerate: linked from `bootstrap.*` (without
            `regenerate` every round trains on round 0's prompts: the pool needs one round's).
        tokenizer: model source whose tokenizer is used (linked from `model.model_name_or_path`).
    """

    def __init__(
        self,
        prompts: str | None = "demo",
        prompts_per_round: PositiveInt = 64,
        synthesized_per_round: NonNegativeInt = 0,
        allow_prompt_reuse: bool = False,
        max_prompt_tokens: PositiveInt = 512,
        max_length: PositiveInt = 1024,
        batch_size: PositiveInt = 4,
        train_batches: Literal["kept", "planned"] = "kept",
        val_path: str | None = "demo",
        val_limit: PositiveInt | None = None,
        val_format: McFormat = "chat",
        val_protocol: McProtocol = "likelihood",
        val_batch_items: PositiveInt = 4,
        val_holdout: ShareBelowOne = 0.1,
        num_workers: NonNegativeInt = 0,
        rounds: PositiveInt = 1,
        epochs_per_round: PositiveInt = 1,
        tokenizer: str = "smollm2-135m-instruct",
        seed: NonNegativeInt = 0,
        regenerate: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()  # the run identity reads them (rounds/plan.py)
        self.prompts_path, self.val_path = bundled("data.prompts", prompts), bundled("data.val_path", val_path)
        self.prompts_per_round, self.allow_prompt_reuse = prompts_per_round, allow_prompt_reuse
        if synthesized_per_round > prompts_per_round:
            raise ConfigError(f"bootstrap.prompt_synthesis.per_round={synthesized_per_round} is more than "
                              f"data.prompts_per_round={prompts_per_round}, the prompts a round answers; lower it.")
        self.file_per_round = prompts_per_round - synthesized_per_round  # prompts a round draws from the file
        self.max_prompt_tokens, self.max_length, self.batch_size = max_prompt_tokens, max_length, batch_size
        self.train_batches = train_batches
        self.val_format, self.val_batch_items, self.val_holdout = val_format, val_batch_items, val_holdout
        self.val_protocol = val_protocol
        self.num_workers, self.rounds, self.epochs_per_round = num_workers, rounds, epochs_per_round
        self.tokenizer_source, self.seed = tokenizer, seed
        self.fresh_rounds = rounds if regenerate else 1  # rounds that draw prompts of their own
        self.encoder: Encoder | None = None  # built in setup(): loading a tokenizer is not a check
        self.val_items: list[dict] = []
        self._round: RoundData | None = None
        # Check the files now, before the Trainer exists or anything is written.
        self.pool = PromptPool(self.prompts_path, seed) if prompts is not None else None
        if self.pool is not None:
            if len(self.pool) < self.fresh_rounds * self.file_per_round:
                self.pool.check_rows()  # a malformed row is the more useful error to report first
            self._check_pool_size(len(self.pool), "rows")
        self._val_rows = read_mc(self.val_path, val_limit) if self.val_path else []
        for row in self._val_rows if val_protocol == "ab" else []:
            if len(row["choices"]) != 2:
                raise ConfigError(f"data.val_path: {self.val_path} line {row['_line']} has {len(row['choices'])} "
                                  "choices; data.val_protocol=ab compares two. Use likelihood or true_false.")

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.pool is None:
            raise ConfigError("data.prompts is null; fitting needs a prompt pool file.")
        if stage == "validate" and not self._val_rows:
            raise ConfigError("validate scores a multiple-choice set, but data.val_path is null; set it to your "
                              "{question, choices, label} file or to demo.")
        if stage == "fit" and self.trainer is not None and self.trainer.reload_dataloaders_every_n_epochs != 1:
            raise ConfigError("trainer.reload_dataloaders_every_n_epochs must be 1: the DataModule picks each "
                              "epoch's round when Lightning asks for the dataloader.")
        if self.encoder is None:
            self.encoder = Encoder.load(self.tokenizer_source, self.max_length)
            self.val_items = tokenize_mc(self._val_rows, self.encoder, self.val_format, self.val_protocol)

    def _check_pool_size(self, size: int, what: str) -> None:
        check_pool_size(size, what, path=self.prompts_path, rounds=self.fresh_rounds, per_round=self.file_per_round,
                        reuse=self.allow_prompt_reuse, synthesized=self.prompts_per_round - self.file_per_round)

    # ---- prompts for the run plan -------------------------------------------------------------

    def draw_prompts(self, count: int | None) -> list[dict]:
        """The first `count` usable prompts of the seeded pool order (None: all), cleaning rows
        only as far as needed; a pool that runs short is refused unless reuse is allowed."""
        kept = self.pool.take(len(self.pool) if count is None else count, self.too_long)
        if self.pool.exhausted:
            self._check_pool_size(len(kept), "prompts after dropping empty, duplicate and too-long ones")
        return kept

    def too_long(self, prompt: str) -> bool:
        return len(self.encoder.ids(prompt)) > self.max_prompt_tokens

    def pool_stats(self) -> dict:
        return self.pool.stats.as_dict()

    # ---- training data ------------------------------------------------------------------------

    @property
    def run(self) -> SoftRun:
        """The run whose rounds this DataModule serves: the BootstrapCallback's."""
        return SoftRun.of(self.trainer)

    def round_data(self, r: int) -> RoundData:
        """Round r's kept records as examples in their recorded `position` order (the
        curriculum's); the held-out share is chosen by a hash of the id, the same on every rank
        and after a resume. Built once per round."""
        if self._round is not None and self._round.round == r:
            return self._round
        run = self.run
        if not run.store.is_generated(r):
            with torch.inference_mode(False):  # Lightning may ask from inside an evaluation loop
                run.make_round(self.trainer, r)
        kept = sorted((rec for rec in run.store.read_records(r) if rec.get("kept")), key=lambda rec: rec["position"])
        examples = [ex for ex in map(self.encoder.encode_record, kept) if ex is not None]
        held = {ex.id for ex in examples if self.is_heldout(ex.id)} if len(examples) > 1 else set()
        self._round = RoundData(r, [ex for ex in examples if ex.id not in held],
                                [ex for ex in examples if ex.id in held])
        return self._round

    def is_heldout(self, id_: str) -> bool:
        return stable_seed(self.seed, "holdout", id_) % 10_000 < self.val_holdout * 10_000

    def full_round_batches(self) -> int:
        """Training batches per device and epoch of a round whose every prompt is kept."""
        return math.ceil(math.ceil(self.prompts_per_round / self.trainer.world_size) / self.batch_size)

    def current_round(self) -> int:
        # (Resumed at the very end, Lightning asks once for the epoch after the last.)
        return min(self.trainer.current_epoch // self.epochs_per_round, self.rounds - 1)

    def train_dataloader(self):
        """This epoch's round, in order, never shuffled. On several ranks a DistributedSampler
        with shuffling off deals example i to rank i % world, so at every step the ranks together
        train the next world x batch_size examples of the order. (Passed in: the one Lightning
        adds to a training loader shuffles, whatever the loader says, which would undo the
        curriculum.) A StatefulDataLoader lets Lightning save the position within the epoch and
        continue from it on resume. With `train_batches: planned` the kept pairs repeat, in order,
        up to the batches of a fully kept round."""
        data = self.round_data(self.current_round())
        if not data.train:
            raise ConfigError(nothing_to_train(data.round, self.run.store.read_manifest(data.round), self.max_length))
        train = data.train
        if self.train_batches == "planned":
            planned = self.full_round_batches() * self.batch_size * self.trainer.world_size
            train = [train[i % len(train)] for i in range(planned)]
        ranks = self.trainer.strategy.distributed_sampler_kwargs if self.trainer.world_size > 1 else None
        sampler = DistributedSampler(train, shuffle=False, **ranks) if ranks else None
        return StatefulDataLoader(train, batch_size=self.batch_size, shuffle=False, sampler=sampler,
                                  collate_fn=self.encoder.collate, num_workers=self.num_workers)

    # ---- validation ---------------------------------------------------------------------------

    def val_dataloader(self):
        """One loader whose batches are either multiple-choice items or this round's held-out
        pairs, never mixed (one loader keeps metric names stable across rounds). Lightning's
        DistributedSampler deals batch i to rank i % world, so each kind is padded to a multiple
        of the world size with uncounted repeats of its first batch: at every step all ranks run
        the same kind of forward passes (FSDP's collectives pair up), and no item counts twice."""
        world = self.trainer.world_size if self.trainer is not None else 1
        mc = [self.val_items[i : i + self.val_batch_items] for i in range(0, len(self.val_items), self.val_batch_items)]
        units = _dealt("mc", mc, world)
        if self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            held = self.round_data(self.current_round()).heldout
            units += _dealt("heldout", [held[i : i + self.batch_size] for i in range(0, len(held), self.batch_size)],
                            world)
        # (Nothing to score still runs one validation per round: its end is where a round's
        # zero-shot adherence is measured and the collapse guard decides.)
        units = units or [("empty", [], False)] * world
        return DataLoader(units, batch_size=None, shuffle=False, collate_fn=self._collate_val,
                          num_workers=self.num_workers)

    def _collate_val(self, unit: tuple[str, list, bool]) -> dict:
        kind, rows, counted = unit
        if kind == "mc":
            return {**collate_mc(rows, self.encoder.tokenizer.pad_token_id, self.val_protocol), "counted": counted}
        return {**self.encoder.collate(rows), "counted": counted} if rows else {}


def _dealt(kind: str, batches: list[list], world: int) -> list[tuple[str, list, bool]]:
    """`batches` as units of `kind`, padded to a multiple of `world` with uncounted repeats of the first."""
    repeats = [(kind, batches[0], False)] * (-len(batches) % world) if batches else []
    return [(kind, rows, True) for rows in batches] + repeats


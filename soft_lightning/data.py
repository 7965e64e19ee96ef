"""DataModule: the prompt pool split into per-round slices, and each round's training set rebuilt
from the round store (Lightning reloads the train dataloader every `epochs_per_round` epochs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from soft_lightning.errors import ConfigError
from soft_lightning.jsonl import read_records
from soft_lightning.pool import PromptPool
from soft_lightning.models import load_tokenizer, resolve_model
from soft_lightning.evaluation import qa_pair
from soft_lightning.prompts import PromptFormat, asset_path, stable_seed
from soft_lightning.store import RoundStore

BUNDLED = {"prompts": "demo_prompts.jsonl", "val_path": "demo_mc.jsonl"}


@dataclass
class TrainExample:
    id: str
    input_ids: list[int]
    labels: list[int] = field(repr=False)


class ResumableBatches(Sampler):
    """Consecutive batches in the given order (no shuffle: the curriculum decided the order).

    Under DDP, rank k takes batches k, k+world, ...: at every step the ranks together train the
    next `world` batches of the order. Ranks must take equal steps, so the last ones wrap around
    to the first batches (as DistributedSampler pads). The first `skip` batches of this rank
    are left out once, while `len()` stays the full count, so Lightning's restored batch counter
    and the data line up after a mid-epoch resume.
    """

    def __init__(self, n_items: int, batch_size: int, skip: int = 0, rank: int = 0, world: int = 1):
        self.n_items, self.batch_size, self.skip, self.rank, self.world = n_items, batch_size, skip, rank, world
        self.n_batches = math.ceil(n_items / batch_size)

    def __len__(self) -> int:
        return math.ceil(self.n_batches / self.world)

    def __iter__(self):
        start, self.skip = self.skip, 0
        for i in range(start, len(self)):
            b = (i * self.world + self.rank) % self.n_batches
            yield list(range(b * self.batch_size, min(self.n_items, (b + 1) * self.batch_size)))


def _bundled(key: str, value: str | None) -> str | None:
    return str(asset_path(BUNDLED[key])) if value == "demo" else value


class SoftDataModule(L.LightningDataModule):
    """Prompt pool -> round slices; round store -> training set; MC file -> validation set.

    Args:
        prompts: JSONL/JSON/Parquet of {prompt, id?}; `demo` is the bundled pool (null for
            `validate`, which needs none). A JSONL pool is read lazily: only the rows the rounds
            use are parsed and cleaned, so a pool of millions of prompts costs little.
        prompts_per_round: fresh prompts each round answers (rounds use disjoint slices).
        rounds: number of rounds (linked from `bootstrap.rounds`).
        allow_prompt_reuse: let rounds wrap around the pool when it is too small.
        max_prompt_tokens: prompts longer than this (in tokens) are dropped and counted.
        max_length: training sequences are cut to this many tokens (response end first).
        batch_size: training batch size (sequences).
        val_path: multiple-choice JSONL {question, choices, label}; `demo` is the bundled set,
            null disables validation.
        val_limit: score only the first N validation items (quick runs).
        val_format: `chat` scores each choice as the answer in the training chat format; `qa`
            uses the plain `Q: {question}\nA: {choice}` format of common harnesses.
        val_batch_items: validation items per batch (all choices of an item stay together).
        val_holdout: share of each round's kept pairs held out of training for `val/loss`.
        tokenizer: model source whose tokenizer is used (linked from `model.model_name_or_path`).
        seed: shuffles the pool before it is split (linked from `bootstrap.seed`).
    """

    def __init__(
        self,
        prompts: str | None = "demo",
        prompts_per_round: int = 64,
        rounds: int = 1,
        allow_prompt_reuse: bool = False,
        max_prompt_tokens: int = 512,
        max_length: int = 1024,
        batch_size: int = 4,
        val_path: str | None = "demo",
        val_limit: int | None = None,
        val_format: Literal["chat", "qa"] = "chat",
        val_batch_items: int = 4,
        val_holdout: float = 0.1,
        num_workers: int = 0,
        tokenizer: str = "smollm2-135m-instruct",
        seed: int = 0,
    ):
        super().__init__()
        if prompts_per_round < 1:
            raise ConfigError(f"data.prompts_per_round must be at least 1, got {prompts_per_round}.")
        if rounds < 1:
            raise ConfigError(f"bootstrap.rounds must be at least 1, got {rounds}.")
        self.prompts_path = _bundled("prompts", prompts)
        self.val_path = _bundled("val_path", val_path)
        self.prompts_per_round, self.rounds, self.allow_prompt_reuse = prompts_per_round, rounds, allow_prompt_reuse
        self.max_prompt_tokens, self.max_length, self.batch_size = max_prompt_tokens, max_length, batch_size
        if not 0 <= val_holdout < 1:
            raise ConfigError(f"data.val_holdout must be in [0, 1), got {val_holdout}.")
        self.val_limit, self.val_batch_items, self.num_workers = val_limit, val_batch_items, num_workers
        self.val_format, self.val_holdout = val_format, val_holdout
        self.heldout_examples: list[TrainExample] = []
        self.tokenizer_source, self.seed = tokenizer, seed
        self.train_examples: list[TrainExample] = []
        self.current_round: int | None = None
        self._restored_round: int | None = None  # the round the checkpoint was training
        self.pool_order: list[list] | None = None  # [[id, difficulty], ...] once the curriculum ordered it
        self.val_items: list[dict] | None = None
        # Check the files now, before the Trainer exists or anything is written; the
        # tokenizer-dependent work waits for setup().
        self.pool = PromptPool(self.prompts_path, seed) if prompts is not None else None
        if self.pool is not None:
            if len(self.pool) < rounds * prompts_per_round:
                self.pool.check_rows()  # a malformed row is the more useful error to report first
            self._check_pool_size(len(self.pool), "rows")
        self._val_rows = self._read_val() if self.val_path else None

    # ---- set-up -------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = load_tokenizer(resolve_model(self.tokenizer_source))
            self.format = PromptFormat(self._tokenizer)
        return self._tokenizer

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.pool is None:
            raise ConfigError("data.prompts is null; fitting needs a prompt pool file.")
        if stage == "fit" and not self.pool.kept:
            if self.pool_order is not None:  # resumed: restore the curriculum's order
                by_id = {p["id"]: p for p in self.all_prompts()}
                self.pool.kept = [{**by_id[i], "difficulty": d} for i, d in self.pool_order]
            self.pool.take(self.rounds * self.prompts_per_round, self._too_long)
            if self.pool.exhausted:
                self._check_pool_size(len(self.pool.kept), "prompts after dropping empty, duplicate and too-long ones")
        if stage in ("fit", "validate") and self._val_rows and self.val_items is None:
            self.val_items = self._tokenize_val(self._val_rows)

    @property
    def pool_stats(self):
        return self.pool.stats

    def _too_long(self, prompt: str) -> bool:
        return len(self.tokenizer(prompt, add_special_tokens=False).input_ids) > self.max_prompt_tokens

    def _check_pool_size(self, size: int, what: str) -> None:
        need = self.rounds * self.prompts_per_round
        if need > size and not self.allow_prompt_reuse:
            raise ConfigError(
                f"data.prompts: {self.prompts_path} has {size} usable {what} but bootstrap.rounds="
                f"{self.rounds} x data.prompts_per_round={self.prompts_per_round} needs {need}; lower "
                "either, add prompts, or set data.allow_prompt_reuse=true."
            )

    def all_prompts(self) -> list[dict]:
        """Every usable prompt of the pool (cleans the whole file: for orderings of the whole pool)."""
        return self.pool.take(len(self.pool), self._too_long)

    def reorder_pool(self, positions: list[int], scores: list[float]) -> None:
        """Put the whole pool in curriculum order (round 0 takes the first slice)."""
        pool = self.all_prompts()
        self.pool.kept = [{**pool[i], "difficulty": scores[i]} for i in positions]
        self.pool_order = [[p["id"], p["difficulty"]] for p in self.pool.kept]

    def prompts_for_round(self, r: int) -> list[dict]:
        """Round r's slice of the pool: disjoint across rounds unless reuse is allowed."""
        n, pool = self.prompts_per_round, self.pool.kept
        return [pool[(r * n + i) % len(pool)] for i in range(min(n, len(pool)))]

    # ---- training data ------------------------------------------------------------------------

    def use_round(self, store: RoundStore, r: int) -> None:
        """Build the training set from round r's kept records, in their recorded `position`
        order (the curriculum's); every epoch of the round replays that order."""
        kept = sorted((rec for rec in store.read_records(r) if rec.get("kept")), key=lambda rec: rec["position"])
        examples = [
            self.encode_pair(rec["id"], rec["prompt"], rec["response"], rec.get("finish_reason") == "stop")
            for rec in kept
        ]
        examples = [ex for ex in examples if ex is not None]
        held = [ex for ex in examples if self.is_heldout(ex.id)] if len(examples) > 1 else []
        self.heldout_examples = held
        held_ids = {ex.id for ex in held}
        self.train_examples = [ex for ex in examples if ex.id not in held_ids]
        self.current_round = r

    def is_heldout(self, id_: str) -> bool:
        # By a hash of the id, so the split is the same after a resume and on every rank.
        return stable_seed(self.seed, "holdout", id_) % 10_000 < self.val_holdout * 10_000

    def encode_pair(self, id_: str, prompt: str, response: str, finished: bool) -> TrainExample | None:
        """Token ids with labels -100 on the context, so the loss covers the response only."""
        context, target = self.format_pair(prompt, response, finished)
        ctx = self.tokenizer(context, add_special_tokens=False).input_ids
        tgt = self.tokenizer(target, add_special_tokens=False).input_ids
        tgt = tgt[: max(0, self.max_length - len(ctx))]
        if not tgt:
            return None
        return TrainExample(id_, ctx + tgt, [-100] * len(ctx) + tgt)

    def format_pair(self, prompt: str, response: str, finished: bool = True) -> tuple[str, str]:
        self.tokenizer  # noqa: B018 - builds self.format
        return self.format.training_pair(prompt, response, finished=finished)

    def encode_text(self, text: str) -> TrainExample:
        """Plain text with every token labelled (for scoring a prompt on its own)."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids[: self.max_length]
        return TrainExample("", ids, list(ids))

    def train_dataloader(self):
        if self.current_round is None:
            raise RuntimeError("no round is loaded yet; the BootstrapCallback must be among the trainer's callbacks.")
        if not self.train_examples:
            raise RuntimeError(f"round {self.current_round} kept no trainable example; see its manifest.json.")
        batches = ResumableBatches(len(self.train_examples), self.batch_size, **self._rank_and_world())
        batches.skip = self._batches_already_trained(len(batches))
        return DataLoader(self.train_examples, batch_sampler=batches, collate_fn=self.collate,
                          num_workers=self.num_workers)

    def _rank_and_world(self) -> dict[str, int]:
        trainer = getattr(self, "trainer", None)
        return {"rank": trainer.global_rank, "world": trainer.world_size} if trainer is not None else {}

    def batches_per_epoch(self) -> int:
        """Training batches this rank takes from the current round in one epoch."""
        return len(ResumableBatches(len(self.train_examples), self.batch_size, **self._rank_and_world()))

    def _batches_already_trained(self, batches_per_epoch: int) -> int:
        """On a resume from a mid-epoch checkpoint, the batches of this epoch already trained.

        Lightning restores its counters but replays a plain DataLoader from the first batch,
        which would train some pairs twice and others never; the order is fixed, so skipping
        the first `processed` batches continues exactly where the run stopped.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.fit_loop.restarting or self.current_round != self._restored_round:
            return 0
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done if done < batches_per_epoch else 0

    def collate(self, batch: list[TrainExample]) -> dict[str, torch.Tensor]:
        width = max(len(ex.input_ids) for ex in batch)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex.input_ids)
            ids[i, :n] = torch.tensor(ex.input_ids)
            labels[i, :n] = torch.tensor(ex.labels)
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # ---- validation ---------------------------------------------------------------------------

    def _read_val(self) -> list[dict]:
        rows = read_records(self.val_path, key="data.val_path",
                            required={"question": str, "choices": list, "label": int})
        for row in rows:
            if len(row["choices"]) < 2 or not all(isinstance(c, str) and c.strip() for c in row["choices"]):
                raise ConfigError(f"data.val_path: {self.val_path} line {row['_line']}: 'choices' must hold 2+ non-empty strings.")
            if not 0 <= row["label"] < len(row["choices"]):
                raise ConfigError(
                    f"data.val_path: {self.val_path} line {row['_line']}: label {row['label']} is out of range "
                    f"for {len(row['choices'])} choices."
                )
        if not rows:
            raise ConfigError(f"data.val_path: {self.val_path} holds no items.")
        return rows[: self.val_limit] if self.val_limit else rows

    def mc_pair(self, question: str, choice: str) -> tuple[str, str]:
        """(context, choice text) of one multiple-choice option in the configured format."""
        return qa_pair(question, choice) if self.val_format == "qa" else self.format_pair(question, choice, False)

    def _tokenize_val(self, rows: list[dict]) -> list[dict]:
        items = []
        for row in rows:
            choices, chars = [], []
            for choice in row["choices"]:
                context, target = self.mc_pair(row["question"], choice)
                ctx = self.tokenizer(context, add_special_tokens=False).input_ids
                tgt = self.tokenizer(target, add_special_tokens=False).input_ids
                choices.append(TrainExample("", ctx + tgt, [-100] * len(ctx) + tgt))
                chars.append(len(target))
            items.append({"choices": choices, "chars": chars, "label": row["label"]})
        return items

    def val_dataloader(self):
        """One loader whose batches are either MC items or this round's held-out generated
        pairs, never mixed. One loader (not two) keeps metric names stable across rounds."""
        units = [("mc", self.val_items[i : i + self.val_batch_items])
                 for i in range(0, len(self.val_items or []), self.val_batch_items)]
        units += [("heldout", self.heldout_examples[i : i + self.batch_size])
                  for i in range(0, len(self.heldout_examples), self.batch_size)]
        return DataLoader(units, batch_size=None, shuffle=False, collate_fn=self._collate_val,
                          num_workers=self.num_workers)

    def _collate_val(self, unit: tuple[str, list]) -> dict[str, torch.Tensor]:
        kind, rows = unit
        return self.collate_mc(rows) if kind == "mc" else self.collate(rows)

    def collate_mc(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """Flatten items' choices into rows; `item_index`/`choice_index` map rows back."""
        rows, item_index, choice_index = [], [], []
        for i, item in enumerate(items):
            for j, ex in enumerate(item["choices"]):
                rows.append(ex)
                item_index.append(i)
                choice_index.append(j)
        batch = self.collate(rows)
        batch["item_index"] = torch.tensor(item_index)
        batch["choice_index"] = torch.tensor(choice_index)
        batch["item_label"] = torch.tensor([item["label"] for item in items])
        batch["choice_chars"] = torch.tensor([c for item in items for c in item["chars"]])
        return batch

    # ---- checkpoint state ---------------------------------------------------------------------

    def state_dict(self):
        return {"current_round": self.current_round, "pool_order": self.pool_order}

    def load_state_dict(self, state_dict):
        self.current_round = self._restored_round = state_dict.get("current_round")
        self.pool_order = state_dict.get("pool_order")

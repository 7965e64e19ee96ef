"""Text to token ids, one way for everyone: the DataModule's training and validation sets, the
curriculum's scorers and the collapse diagnostics all encode a (prompt, response) pair here, so
what is scored is exactly what is trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.nn.utils.rnn import pad_sequence

from soft_lightning.models.formats import PromptFormat
from soft_lightning.models.source import load_tokenizer, resolve_model


@dataclass
class TrainExample:
    id: str
    input_ids: list[int]
    labels: list[int] = field(repr=False)  # -100 where no loss is taken


class Encoder:
    """A tokenizer, its prompt format and the sequence length cap.

    Args:
        tokenizer: a loaded HF tokenizer (`Encoder.load` builds one from a model source).
        max_length: sequences are cut to this many tokens (the response end first).
    """

    def __init__(self, tokenizer, max_length: int = 1024):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.format = PromptFormat(tokenizer)

    @classmethod
    def load(cls, model_source: str, max_length: int = 1024) -> Encoder:
        return cls(load_tokenizer(resolve_model(model_source)), max_length)

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def encode_pair(self, id_: str, prompt: str, response: str, finished: bool = True) -> TrainExample | None:
        """The training format (principles and examples dropped), labels on the response only;
        None when no response token fits in `max_length`."""
        context, target = self.format.training_pair(prompt, response, finished=finished)
        return self.encode_target(id_, context, target)

    def encode_target(self, id_: str, context: str, target: str) -> TrainExample | None:
        ctx = self.ids(context)
        tgt = self.ids(target)[: max(0, self.max_length - len(ctx))]
        if not tgt:
            return None
        return TrainExample(id_, ctx + tgt, [-100] * len(ctx) + tgt)

    def encode_record(self, record: dict) -> TrainExample | None:
        """A generated record ({id, prompt, response, finish_reason}) as a training example."""
        return self.encode_pair(record.get("id", ""), record["prompt"], record["response"],
                                record.get("finish_reason") == "stop")

    def encode_text(self, text: str) -> TrainExample:
        """Plain text with every token labelled (for scoring a prompt on its own)."""
        ids = self.ids(text)[: self.max_length]
        return TrainExample("", ids, list(ids))

    def collate(self, batch: list[TrainExample]) -> dict[str, torch.Tensor]:
        """Right-padded ids, attention mask and labels."""
        ids, mask = pad([ex.input_ids for ex in batch], self.tokenizer.pad_token_id)
        labels, _ = pad([ex.labels for ex in batch], -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad(rows: list[list[int]], value: int, side: Literal["left", "right"] = "right") -> tuple[torch.Tensor, ...]:
    """Token rows as one tensor padded with `value` on `side`, and the mask of the real tokens:
    the one padding routine of training, scoring and generation."""
    seqs = [torch.tensor(row, dtype=torch.long) for row in rows]
    ids = pad_sequence(seqs, batch_first=True, padding_value=value, padding_side=side)
    mask = pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True, padding_value=0, padding_side=side)
    return ids, mask

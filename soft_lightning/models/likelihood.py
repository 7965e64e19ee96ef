"""Likelihood maths: log-likelihood and entropy of labelled tokens, shared by training (the loss),
multiple-choice validation, the perplexity scorers and the collapse diagnostics."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from soft_lightning.models.encoding import Encoder, TrainExample
from soft_lightning.utils.progress import Progress, no_progress


@dataclass
class Forward:
    """What a forward pass outside training needs: the encoder, the policy model, the sequences
    per pass, the strategy whose ranks split the items (None: one process), and `stop`: called
    on every rank after each batch of the long scorings (relevance, capability), it raises to
    stop them (a preemption: minutes of scoring on a CPU would outlast a scheduler's grace)."""

    encoder: Encoder
    model: Any
    batch_size: int
    strategy: Any = None
    stop: Callable[[], None] | None = None

    def args(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "model": self.model, "batch_size": self.batch_size,
                "strategy": self.strategy}


def trunk_and_head(model) -> tuple[Callable[..., torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """The model split into the decoder (to per-position states) and the LM head, so the head runs
    only where logits are needed: over a large vocabulary it is a big share of a small model's
    compute (SmolLM2: 49k x 576, a fifth of its weights). Models that transform their logits
    (soft-capping, scaling) stay whole: their "states" are the logits."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    config = getattr(lm, "config", None)
    if head is None or any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale")):
        return (lambda **kw: model(**kw).logits), (lambda states: states)
    return (lambda **kw: lm.get_decoder()(**kw).last_hidden_state), head


def labelled_logits(model, input_ids, attention_mask, labels, *,
                    share_header: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token logits (float32) at the positions that have a label (not -100), their target
    ids, and the row each comes from. Prompt, context and pad positions get no logits.

    `share_header` (scoring, no gradient): the leading tokens that every row shares before its
    first label (a chat template's system and user turn header, a third of a short scored
    sequence) run once for the batch, and their cache is copied to every row. Every batch runs
    two passes, shared header or not, so FSDP's ranks run equally many."""
    targets = labels[:, 1:].to(input_ids.device)
    keep = targets != -100
    trunk, head = trunk_and_head(model)
    if not share_header:
        states = trunk(input_ids=input_ids, attention_mask=attention_mask)
        return head(states[:, :-1][keep]).float(), targets[keep], keep.nonzero()[:, 0]
    p = header_length(input_ids, keep)
    if p:
        cache = DynamicCache(config=model.config)
        trunk(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p], past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(len(input_ids))
        positions = torch.arange(p, input_ids.shape[1], device=input_ids.device).expand(len(input_ids), -1)
        states = trunk(input_ids=input_ids[:, p:], attention_mask=attention_mask, position_ids=positions,
                       past_key_values=cache, use_cache=True)
    else:  # no shared header: a one-token first pass, discarded, keeps the two passes
        trunk(input_ids=input_ids[:1, :1], attention_mask=attention_mask[:1, :1])
        states = trunk(input_ids=input_ids, attention_mask=attention_mask)
    targets, keep = targets[:, p:], keep[:, p:]
    return head(states[:, :-1][keep]).float(), targets[keep], keep.nonzero()[:, 0]


def header_length(input_ids: torch.Tensor, labelled: torch.Tensor) -> int:
    """How many leading tokens all rows share before the position that predicts any row's first
    labelled token (`labelled`: the next-token targets' mask, as in `labelled_logits`)."""
    first = int(labelled.int().argmax(-1).min()) if bool(labelled.any(-1).all()) else 0
    same = (input_ids[:, :first] == input_ids[:1, :first]).all(0)
    return int(same.int().cumprod(0).sum())


def response_loss(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Mean cross-entropy over the labelled (response) tokens of the batch, as HF's `labels=` loss."""
    logits, targets, _ = labelled_logits(model, input_ids, attention_mask, labels)
    return torch.nn.functional.cross_entropy(logits, targets)


def _row_sums(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    sums = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
    return sums, torch.bincount(rows, minlength=n_rows)


@torch.no_grad()
def labelled_logprobs(model, input_ids, attention_mask, labels, *,
                      share_header: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed log-probability of the tokens whose label is not -100, and their count
    (`share_header`: see `labelled_logits`; off, every row runs whole)."""
    logits, targets, rows = labelled_logits(model, input_ids, attention_mask, labels, share_header=share_header)
    token_lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return _row_sums(token_lp, rows, len(input_ids))


@torch.no_grad()
def token_entropy(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed entropy (nats) of the model's next-token distribution at labelled positions,
    and their count. Low entropy = a sharp, collapsing output distribution."""
    logits, _, rows = labelled_logits(model, input_ids, attention_mask, labels, share_header=True)
    logp = torch.log_softmax(logits, dim=-1)
    return _row_sums(-(logp.exp() * logp).sum(-1), rows, len(input_ids))


@torch.no_grad()
def choice_logprobs(model, context_ids, context_mask, choice_ids, choice_mask, context_index) -> torch.Tensor:
    """Per choice row: the summed log-probability of its tokens after its context (row
    `context_index` of the contexts).

    Each context (left-padded, one row each) runs once; its KV cache is copied to its choice rows
    (right-padded), which continue from it. A question shared by k choices is prefilled once
    instead of k times.
    """
    trunk, head = trunk_and_head(model)
    cache = DynamicCache(config=model.config)
    positions = (context_mask.cumsum(-1) - 1).clamp(min=0)
    last = trunk(input_ids=context_ids, attention_mask=context_mask, position_ids=positions,
                 past_key_values=cache, use_cache=True)[:, -1]  # every context ends in the last column
    cache.reorder_cache(context_index)
    offsets = context_mask.sum(-1)[context_index, None] + torch.arange(choice_ids.shape[1], device=choice_ids.device)
    states = trunk(input_ids=choice_ids, attention_mask=torch.cat([context_mask[context_index], choice_mask], 1),
                   position_ids=offsets, past_key_values=cache, use_cache=True)
    # A choice's first token is predicted by its context's last state, token t by its state t-1.
    states = torch.cat([last[context_index, None], states[:, :-1]], 1)
    keep = choice_mask.bool()
    logits = head(states[keep]).float()
    token_lp = torch.log_softmax(logits, -1).gather(-1, choice_ids[keep].unsqueeze(-1)).squeeze(-1)
    return _row_sums(token_lp, keep.nonzero()[:, 0], len(choice_ids))[0]


def choice_margins(per_item: list[torch.Tensor], labels: list[int]) -> torch.Tensor:
    """Per item: the right choice's score minus the best wrong choice's (> 0: picked right)."""
    return torch.stack([scores[label] - torch.cat([scores[:label], scores[label + 1 :]]).max()
                        for scores, label in zip(per_item, labels)])


@contextmanager
def eval_mode(model):
    """Dropout off while scoring; the previous mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# What a forward pass runs in place of an example with nothing to score (its result is dropped).
_PLACEHOLDER = TrainExample("", [0, 0], [-100, 0])


def per_example_means(stat, examples, collate, model, batch_size: int, progress: Progress = no_progress) -> list[float]:
    """`stat`'s per-token mean for each example (NaN for None), in length-sorted batches so
    padding stays small. A None example still takes its place in a batch (as a two-token
    placeholder): the number of forward passes depends only on `len(examples)`, so ranks given
    equally many examples run equally many, as FSDP's sharded weights need (distributed.shard_map)."""
    means = [math.nan] * len(examples)
    rows = [ex if ex is not None else _PLACEHOLDER for ex in examples]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx]).items()}
            sums, counts = stat(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            for i, total, count in zip(idx, sums.tolist(), counts.tolist()):
                if examples[i] is not None:
                    means[i] = total / count if count else math.nan
            progress(len(idx), int(batch["attention_mask"].sum()))
    return means

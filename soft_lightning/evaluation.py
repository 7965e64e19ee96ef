"""Log-likelihood of labelled tokens: the one piece of model math shared by multiple-choice
validation and the perplexity difficulty scorers."""

from __future__ import annotations

import torch


@torch.no_grad()
def labelled_logprobs(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed log-probability of the tokens whose label is not -100, and their count.

    One batched forward pass; log-softmax in float32 so bf16 models score stably.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = labels[:, 1:].to(logits.device)
    mask = targets != -100
    token_lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_lp * mask).sum(-1), mask.sum(-1)

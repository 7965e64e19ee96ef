"""The hf backend: batched transformers `generate`, with the round's adapter either as the
training model's LoRA (`adapter_sync: lora`) or folded into a full-precision generation copy of
the base (`merged`: decodes as fast as the base model).

Every prompt of a round starts with the same principles, so their common token prefix is run
through the model once per round and adapter and its KV cache reused for every batch; each
batch holds [prefix][padding][own tokens], with the padding masked out (positions follow the
mask, so the result equals generating each prompt on its own). Batches are sized by tokens.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from soft_lightning.models.encoding import pad
from soft_lightning.models.likelihood import eval_mode
from soft_lightning.models.merge import AdapterMerger
from soft_lightning.sampler.base import SamplerBase, make_record
from soft_lightning.sampler.settings import SamplingSettings
from soft_lightning.utils.progress import no_progress
from soft_lightning.utils.seeds import stable_seed


class GenerationCopy:
    """A full-precision copy of the base model, with the round's adapter folded in (merged):
    loaded on first use, so it can be handed to a spawned sampler process before that."""

    def __init__(self, source: str, dtype: str = "bfloat16", device: str = "cpu", trust_remote_code: bool = False):
        self.source, self.dtype, self.device, self.trust_remote_code = source, dtype, device, trust_remote_code
        self._model = self._merger = None

    def release(self) -> None:
        """On a GPU, give the copy's memory back to training until the next round (it is loaded
        again, and the round's adapter merged, on first use)."""
        if self._model is not None and str(self.device).startswith("cuda"):
            self._model = self._merger = None
            torch.cuda.empty_cache()

    def model_for(self, adapter: Path | None):
        if self._model is None:
            from transformers import AutoModelForCausalLM

            self._model = AutoModelForCausalLM.from_pretrained(
                self.source, dtype=getattr(torch, self.dtype), trust_remote_code=self.trust_remote_code
            ).to(self.device).eval()
            self._merger = AdapterMerger(self.source)
        if adapter != self._merger.adapter:
            with torch.no_grad():
                for name, weight in self._merger.changes(adapter):
                    self._model.get_parameter(name).copy_(weight)
        return self._model


def token_batches(lengths: list[int], budget: int, extra: int) -> list[list[int]]:
    """Indices in batches, longest first, each as large as fits `budget` tokens counted as
    rows x (its longest row + `extra`), the size of the batch's KV cache."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * (lengths[batches[-1][0]] + extra) <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class HFSampler(SamplerBase):
    name = "hf"

    def __init__(self, sampling: SamplingSettings, stop: list[str], seed: int, tokenizer, batch_tokens: int = 16384,
                 copy: GenerationCopy | None = None):
        super().__init__(sampling, stop, seed)
        self.tokenizer, self.batch_tokens, self.copy = tokenizer, batch_tokens, copy
        # End-of-turn markers that are single tokens stop generation as tokens; the rest as strings.
        self.stop_ids = sorted({tokenizer.eos_token_id} | {
            tokenizer.convert_tokens_to_ids(s) for s in stop if s in tokenizer.get_vocab()
        } - {None})
        self.stop_strings = [s for s in stop if s not in tokenizer.get_vocab()]
        self._prefix: tuple[Any, list[int], Any] | None = None  # (key, ids, KV cache)

    def sampling_model(self):
        """The model to sample from: the merged copy, or the policy being trained (LoRA on top)."""
        return self.copy.model_for(self.adapter) if self.copy else self.model

    def pause(self) -> None:
        if self.copy is not None:
            self.copy.release()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "batch_tokens": self.batch_tokens,
                "adapter_sync": "merged" if self.copy else "lora", "dtype": self.copy.dtype if self.copy else None}

    @torch.no_grad()
    def generate(self, requests, *, round_index, sampling=None, progress=no_progress) -> list[dict]:
        model = self.sampling_model()
        sampling = sampling or self.sampling
        ids = [self.tokenizer(r.text, add_special_tokens=False).input_ids for r in requests]
        prefix, cache = self._prefix_cache(model, ids, key=(round_index, str(self.adapter)))
        suffixes = [row[len(prefix):] for row in ids]
        out: dict[int, dict] = {}
        with eval_mode(model):
            for idx in token_batches([len(s) for s in suffixes], self.batch_tokens,
                                     len(prefix) + sampling.max_new_tokens):
                batch = [requests[i] for i in idx]
                seed = stable_seed(self.seed, round_index, batch[0].id) % 2**63
                rows = self._generate_batch(model, batch, prefix, cache, [suffixes[i] for i in idx], seed, sampling)
                out.update(zip(idx, rows))
                progress(len(idx), sum(row["n_tokens"] for row in rows))
        return [out[i] for i in range(len(requests))]

    def _prefix_cache(self, model, ids: list[list[int]], key) -> tuple[list[int], DynamicCache | None]:
        """The prompts' common token prefix (every prompt keeps one token of its own) and its KV
        cache, computed once per round and adapter."""
        prefix = os.path.commonprefix(ids)[: min(map(len, ids)) - 1]
        if self._prefix is None or self._prefix[:2] != (key, prefix):
            cache = None
            if prefix:
                cache = DynamicCache(config=model.config)
                with eval_mode(model):
                    model(input_ids=torch.tensor([prefix], device=model.device), past_key_values=cache, use_cache=True)
            self._prefix = (key, prefix, cache)
        return prefix, self._prefix[2]

    @staticmethod
    def _sampling_kwargs(sampling: SamplingSettings) -> dict[str, Any]:
        if sampling.temperature == 0:  # greedy
            decoding = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        else:
            decoding = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        return {**decoding, "max_new_tokens": sampling.max_new_tokens}

    def _generate_batch(self, model, batch, prefix, cache, suffixes, seed, sampling) -> list[dict]:
        device = model.device
        own, own_mask = pad(suffixes, self.tokenizer.pad_token_id, "left")
        shared = torch.tensor([prefix] * len(batch), dtype=torch.long).reshape(len(batch), len(prefix))
        input_ids, mask = torch.cat([shared, own], dim=1), torch.cat([torch.ones_like(shared), own_mask], dim=1)
        past = None
        if cache is not None:
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(batch))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            gen = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), past_key_values=past,
                **self._sampling_kwargs(sampling), eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id, stop_strings=self.stop_strings or None,
                tokenizer=self.tokenizer if self.stop_strings else None, output_scores=True,
                return_dict_in_generate=True, use_cache=True,
            )
        new = gen.sequences[:, input_ids.shape[1] :]
        logprobs = model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
        records = []
        for req, ids, lps in zip(batch, new.tolist(), logprobs):
            n, finish = len(ids), "length"
            for j, tok in enumerate(ids):
                if tok in self.stop_ids:
                    n, finish = j + 1, "stop"
                    break
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
            for s in self.stop_strings:
                if s in text:
                    text, finish = text.split(s, 1)[0], "stop"
            mean_lp = lps[:n].float().mean().item() if n else 0.0
            records.append(make_record(req, text.strip(), n, finish, mean_lp))
        return records


class HFAdapterSampler(HFSampler):
    """The hf backend without the trained model (in a spawned child): `load_model(adapter=,
    device=)` builds the policy model the way training does on `device`, with the round's saved
    adapter (None: the run's starting weights), so it samples from exactly the weights training saved."""

    def __init__(self, sampling: SamplingSettings, stop: list[str], seed: int, tokenizer,
                 load_model: Callable[..., Any], batch_tokens: int = 16384, dtype: str | None = None,
                 device: str = "cpu"):
        super().__init__(sampling, stop, seed, tokenizer, batch_tokens)
        self.load_model, self.dtype, self.device = load_model, dtype, device
        self._loaded: tuple[str | None, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dtype": self.dtype}

    def sampling_model(self):
        """One model at a time: a new adapter rebuilds it (one adapter per round, so once a round)."""
        key = str(self.adapter) if self.adapter is not None else None
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # free the old one before loading the next
            self._loaded = (key, self.load_model(adapter=key, device=self.device))
        return self._loaded[1]

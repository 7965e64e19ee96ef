"""Samplers: the interface and shared settings (base.py), the backends (hf.py, vllm.py), a
spawned child process around either (process.py), and here the choice a run makes: `auto`
resolved and logged once, combinations that cannot work refused before any model loads.
Imports flow one way: base <- backends <- this factory <- the callback; the backends are
imported on use (vLLM's import is slow, and absent from some installs)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from lightning.pytorch.utilities import rank_zero_info

from soft_lightning.errors import ConfigError
from soft_lightning.sampler.base import (
    SAMPLER_FIELDS,
    AdapterSync,
    GenerationRequest,
    Sampler,
    SamplerName,
    SamplerProcessMode,
    SamplingConfig,
    make_record,
    resolve_adapter_sync,
    resolve_sampler,
)
from soft_lightning.sampler.vllm import VLLMOptions, check_vllm_options, vllm_lora_rank

__all__ = ["SAMPLER_FIELDS", "AdapterSync", "GenerationRequest", "Sampler", "SamplerName", "SamplerProcessMode",
           "SamplingConfig", "VLLMOptions", "check_sampler_for_run", "check_sampler_settings", "make_record",
           "make_sampler", "vllm_lora_rank"]


def make_sampler(name: SamplerName, process: SamplerProcessMode, *, module, tokenizer,
                 sampling: SamplingConfig, stop: list[str], seed: int, vllm: VLLMOptions, hf_batch_tokens: int,
                 adapter_sync: AdapterSync = "auto", ranks: tuple[int, int, int] = (0, 0, 1)) -> Sampler:
    """The sampler a run uses; `auto` choices are resolved here, once, and logged. `module` is
    the SoftModule being trained (the vLLM engine loads its source; a spawned hf sampler rebuilds
    it with `policy_for_sampling` from its hyperparameters); `ranks` is (global rank, local rank, world size)."""
    from soft_lightning.models import checkpoint_bytes
    from soft_lightning.sampler.hf import GenerationCopy, HFAdapterSampler, HFSampler
    from soft_lightning.sampler.process import SamplerProcess
    from soft_lightning.sampler.vllm import VLLMSampler

    backend, source, dtype = resolve_sampler(name), module.source(), module.resolve_numerics().dtype
    param = next(p for p in module.parameters() if p.requires_grad)
    # The merged copy's real size: the base's shapes in the run's dtype (not the packed 4-bit
    # weights, a quarter of it, nor one FSDP shard of them).
    copy_bytes = checkpoint_bytes(source, dtype) or 0
    sync = resolve_adapter_sync(adapter_sync, backend, source, copy_bytes, str(param.device))
    if "auto" in (name, adapter_sync):
        rank_zero_info(f"[soft] sampler: {backend}, adapter_sync: {sync}")
    common = {"sampling": sampling, "stop": stop, "seed": seed}
    if backend == "vllm":
        options = replace(vllm, dtype=dtype) if vllm.dtype == "auto" else vllm  # the run's numerics
        kwargs = {**common, "model_path": source, "lora_rank": module.hparams.lora_r, "options": options,
                  "trust_remote_code": module.hparams.trust_remote_code, "adapter_sync": sync}
        if process == "inline":
            return VLLMSampler(**kwargs, **dict(zip(("rank", "local_rank", "world"), ranks)))
        # A spawned engine is a process of its own; under several ranks it sees its rank's GPU only.
        return SamplerProcess(VLLMSampler, kwargs, visible_devices=str(ranks[1]) if ranks[2] > 1 else None)
    hf = {**common, "batch_tokens": hf_batch_tokens}
    if sync == "merged":  # a copy of the base in the run's dtype beside the training model, or in the spawned child
        copy = GenerationCopy(source, dtype, str(param.device), module.hparams.trust_remote_code)
        if process == "inline":
            return HFSampler(**hf, tokenizer=tokenizer, copy=copy)
        return SamplerProcess(HFSampler, {**hf, "tokenizer": tokenizer, "copy": copy})
    if process == "inline":
        return HFSampler(**hf, tokenizer=tokenizer)
    # The child builds the model from the module's hparams, on this rank's device, in the dtype
    # training holds the weights in (bf16-true casts them; 32-true and mixed do not).
    cast = None if param.dtype == torch.float32 else str(param.dtype).removeprefix("torch.")
    hparams = {**module.hparams, "compute_dtype": dtype}
    load = partial(type(module).policy_for_sampling, hparams, cast, str(param.device))
    return SamplerProcess(HFAdapterSampler, {**hf, "tokenizer": tokenizer, "load_model": load, "dtype": cast})


def check_sampler_for_run(name: SamplerName, process: SamplerProcessMode, options: VLLMOptions, lora_r: int,
                          world: int, sharded: bool) -> None:
    """What this run's ranks and strategy allow, refused before any model loads (also for a
    spawned engine). `sharded`: the training weights are split over the ranks (FSDP)."""
    backend = resolve_sampler(name)
    if backend == "vllm":
        vllm_lora_rank(lora_r)
        check_vllm_options(options, world, process)
    elif sharded and world > 1 and process == "inline":
        raise ConfigError(
            "bootstrap.sampler=hf with bootstrap.sampler_process=inline cannot generate from FSDP-sharded weights "
            "on several ranks (their prompts differ, so their forward passes do); set bootstrap.sampler_process=spawn "
            "or bootstrap.sampler=vllm."
        )


def check_sampler_settings(name: SamplerName, process: SamplerProcessMode, options: VLLMOptions) -> None:
    """Combinations that cannot work, refused when the callback is built."""
    if process == "spawn" and name != "hf" and options.sleep_between_rounds:
        raise ConfigError(
            "bootstrap.vllm.sleep_between_rounds=true does nothing with bootstrap.sampler_process=spawn, "
            "whose engine process exits after every round; set sleep_between_rounds to false."
        )

"""Which sampler a run gets, built once: `auto` choices resolved and logged here. Its own module
so imports flow one way: the interface (sampler.py) <- the backends <- this factory <- the callback.
The backends are imported on use (vLLM's import is slow, and absent from some installs)."""

from __future__ import annotations

from dataclasses import replace

import torch
from lightning.pytorch.utilities import rank_zero_info

from soft_lightning.sampler import (
    AdapterSync,
    Sampler,
    SamplerName,
    SamplerProcessMode,
    SamplingConfig,
    VLLMOptions,
    resolve_adapter_sync,
    resolve_sampler,
)


def make_sampler(name: SamplerName, process: SamplerProcessMode, *, module, tokenizer, tokenizer_source: str,
                 sampling: SamplingConfig, stop: list[str], seed: int, vllm: VLLMOptions, hf_batch_tokens: int,
                 adapter_sync: AdapterSync = "auto", ranks: tuple[int, int, int] = (0, 0, 1)) -> Sampler:
    """The sampler a run uses; `auto` choices are resolved here, once, and logged. `module` is
    the SoftModule being trained (the vLLM engine loads its source; a spawned hf sampler rebuilds
    it from its hyperparameters); `ranks` is (global rank, local rank, world size)."""
    from soft_lightning.models import checkpoint_bytes
    from soft_lightning.sampler_hf import GenerationCopy, HFSampler
    from soft_lightning.sampler_process import HFAdapterSampler, SamplerProcess
    from soft_lightning.sampler_vllm import VLLMSampler

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
    return SamplerProcess(HFAdapterSampler, {
        **hf, "module_hparams": {**module.hparams, "compute_dtype": dtype}, "tokenizer_source": tokenizer_source,
        "dtype": None if param.dtype == torch.float32 else str(param.dtype).removeprefix("torch."),
        "device": str(param.device),
    })

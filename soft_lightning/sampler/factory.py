"""The one way to build a sampler: `make_sampler(settings, policy, ...)` for a run, a command, a
benchmark or an experiment alike. `auto` choices are resolved here (and logged once), and the
combinations that cannot work are refused before any model loads. The backends are imported on
use: vLLM's import is slow, and absent from some installs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from soft_lightning.models.formats import PromptFormat
from soft_lightning.models.source import checkpoint_bytes, load_tokenizer
from soft_lightning.sampler.base import Policy, Sampler
from soft_lightning.sampler.settings import AdapterSync, SamplerSettings, SamplingSettings
from soft_lightning.sampler.vllm import check_sleep_host_memory, check_vllm_options, vllm_lora_rank
from soft_lightning.utils.errors import ConfigError


def resolve_backend(name: str) -> str:
    """`auto` -> `vllm` where vLLM imports (the CPU build included), else `hf`: vLLM is the faster
    backend on both kinds of CPU measured, in the dtype `auto` picks there.

    bench/precision.py, 2 cores of an AMD EPYC, 16 greedy zero-shot answers, engine start excluded:
    AVX-512 with bf16 (bfloat16): vLLM 183 tok/s, hf 105; torch/oneDNN/MKL lowered to AVX2
    (float32): vLLM 112, hf 68. With the demo's prompts and the adapter merged (bench/adapter_sync.py)
    vLLM was ~3x hf. (With the adapter as a LoRARequest it was 8x slower than without, hence
    `adapter_sync: merged`.)
    """
    if name != "auto":
        return name
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "hf"
    return "vllm"


def resolve_adapter_sync(sync: AdapterSync, backend: str, source: str, copy_bytes: int, device: str) -> str:
    """`auto` -> `merged`, unless the base is not a local folder (it is re-read to merge) or the hf
    backend on a GPU has no room for a full-precision copy beside training (1.5x its size free).

    Measured on CPU (bench/adapter_sync.py): with the adapter merged, adapter rounds decode as fast
    as base rounds on both backends. vLLM merges into the engine's own weights, so it costs no
    memory; on GPUs LoRA serving costs 1.33-1.39x the time per output token (TRL PR #7017).
    """
    if sync != "auto":
        return sync
    if not (Path(source) / "config.json").is_file() or not copy_bytes:
        return "lora"
    if backend == "hf" and device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return "merged" if free > 1.5 * copy_bytes else "lora"
    return "merged"


def make_sampler(settings: SamplerSettings, policy: Policy, *, sampling: SamplingSettings, seed: int = 0,
                 tokenizer=None, stop: list[str] | None = None, ranks: tuple[int, int, int] = (0, 0, 1)) -> Sampler:
    """The sampler of `settings` over `policy`'s weights; its engine starts with the first
    generation. `tokenizer` and `stop` default to the policy's (its chat template's end of turn);
    `ranks` is (global rank, local rank, world size)."""
    from lightning.pytorch.utilities import rank_zero_info

    from soft_lightning.sampler.hf import GenerationCopy, HFAdapterSampler, HFSampler
    from soft_lightning.sampler.process import SamplerProcess, rank_devices
    from soft_lightning.sampler.vllm import VLLMSampler

    tokenizer = tokenizer or load_tokenizer(policy.source, policy.trust_remote_code)
    stop = PromptFormat(tokenizer).stop_strings() if stop is None else stop
    backend = resolve_backend(settings.backend)
    # The merged copy's real size: the base's shapes in the run's dtype (not the packed 4-bit
    # weights, a quarter of it, nor one FSDP shard of them).
    sync = resolve_adapter_sync(settings.adapter_sync, backend, policy.source,
                                checkpoint_bytes(policy.source, policy.dtype) or 0, policy.device)
    if "auto" in (settings.backend, settings.adapter_sync):
        rank_zero_info(f"[soft] sampler: {backend}, adapter_sync: {sync}")
    rank, local_rank, world = ranks
    tp = settings.vllm.tensor_parallel_size if backend == "vllm" and world > 1 else 1
    # Each share of a round samples with a seed of its own (as TRL and verl seed colocated
    # engines: base + rank // tp); one rank keeps the run's seed.
    common = {"sampling": sampling, "stop": stop, "seed": seed + rank // tp}
    spawned = settings.process == "spawn"
    # A spawned sampler sees this rank's GPU alone, as the parent names it (e.g. 5 for cuda:1 under
    # CUDA_VISIBLE_DEVICES=4,5), and uses it as cuda:0; an inline one uses the rank's own device.
    cuda = policy.device.startswith("cuda")
    visible = rank_devices(policy.device) if spawned and cuda and world > 1 else None
    device = "cuda:0" if visible is not None else policy.device
    if backend == "vllm":
        vllm = settings.vllm
        options = replace(vllm, dtype=policy.dtype) if vllm.dtype == "auto" else vllm  # the policy's numerics
        kwargs = {**common, "model_path": policy.source, "lora_rank": policy.lora_rank, "options": options,
                  "trust_remote_code": policy.trust_remote_code, "adapter_sync": sync}
        if not spawned:
            index = torch.device(policy.device).index if cuda else None
            return VLLMSampler(**kwargs, rank=rank, local_rank=local_rank if index is None else index, world=world)
        return SamplerProcess(VLLMSampler, kwargs, visible_devices=visible)
    hf = {**common, "tokenizer": tokenizer, "batch_tokens": settings.hf_batch_tokens}
    if sync == "merged":  # a copy of the base in the policy's dtype, here or in the spawned child
        copy = GenerationCopy(policy.source, policy.dtype, device, policy.trust_remote_code)
        return SamplerProcess(HFSampler, {**hf, "copy": copy}, visible_devices=visible) if spawned \
            else HFSampler(**hf, copy=copy)
    if not spawned:  # samples from the model `sync_weights` hands it (the policy being trained)
        return HFSampler(**hf)
    if policy.load is None:
        raise ConfigError("a spawned hf sampler with adapter_sync=lora rebuilds the training policy, which only a "
                          "run can; use adapter_sync merged.")
    return SamplerProcess(HFAdapterSampler, {**hf, "load_model": policy.load, "dtype": policy.cast, "device": device},
                          visible_devices=visible)


def check_sampler_settings(settings: SamplerSettings) -> None:
    """Combinations that cannot work, refused when the callback is built."""
    if settings.process == "spawn" and settings.backend != "hf" and settings.vllm.sleep_between_rounds:
        raise ConfigError(
            "bootstrap.sampler.vllm.sleep_between_rounds=true does nothing with bootstrap.sampler.process=spawn, "
            "whose engine process exits after every round; set sleep_between_rounds to false."
        )


def check_sampler_for_run(settings: SamplerSettings, lora_r: int, world: int, sharded: bool,
                          engine_bytes: Callable[[], int | None] = lambda: None, ranks_here: int = 1) -> None:
    """What this run's ranks and strategy allow, refused before any model loads (also for a
    spawned engine). `sharded`: the training weights are split over the ranks (FSDP);
    `engine_bytes()`: the engine's weights in the run's dtype; `ranks_here`: ranks on this node."""
    backend = resolve_backend(settings.backend)
    if backend == "vllm":
        vllm_lora_rank(lora_r)
        check_vllm_options(settings.vllm, world, settings.process)
        if settings.vllm.sleep_between_rounds:
            import psutil

            check_sleep_host_memory(engine_bytes(), ranks_here, psutil.virtual_memory().available)
    elif sharded and world > 1 and settings.process == "inline":
        raise ConfigError(
            "bootstrap.sampler.backend=hf with bootstrap.sampler.process=inline cannot generate from FSDP-sharded "
            "weights on several ranks (their prompts differ, so their forward passes do); set "
            "bootstrap.sampler.process=spawn or bootstrap.sampler.backend=vllm."
        )

"""Every generation setting, documented once: how responses are sampled (`SamplingSettings` and
its named presets) and what samples them (`SamplerSettings`: the backend, where it runs, how the
adapter reaches it, the vLLM engine's options).

The presets are the one home of each use's defaults; the settings that expose them (for example
`bootstrap.zero_shot.max_new_tokens`) take their default from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jsonargparse.typing import NonNegativeFloat, PositiveInt

from soft_lightning.utils.config_types import ShareUpToOne

# `vllm`: one engine, the round's LoRA per request; `hf`: transformers generate; `auto`: see
# factory.resolve_backend.
SamplerName = Literal["vllm", "hf", "auto"]
# `inline`: in the training process; `spawn`: in a child process that exits before every round's training.
SamplerProcessMode = Literal["inline", "spawn"]
# How the round's adapter reaches the sampler: `lora` applied on top of the base at every step
# (vLLM's LoRARequest, or the training model's own LoRA); `merged` folded into full-precision
# base weights (decodes at the base model's speed); `auto`: see factory.resolve_adapter_sync.
AdapterSync = Literal["lora", "merged", "auto"]


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled (every backend).

    Attributes:
        temperature: sampling temperature; 0 is greedy decoding.
        top_p: nucleus sampling: the smallest set of tokens holding this much probability, in (0, 1].
        max_new_tokens: the response length cap in tokens; an answer that reaches it never ended
            (`finish_reason: length`, see `bootstrap.filters.truncated`).
    """

    temperature: NonNegativeFloat = 0.7
    top_p: ShareUpToOne = 0.95
    max_new_tokens: PositiveInt = 512


# The named presets (`replace(PRESET, max_new_tokens=...)` where a setting overrides the cap).
ROUNDS = SamplingSettings()  # a round's few-shot answers: `bootstrap.sampling`
ZERO_SHOT = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=128)  # held-out answers, greedy
SYNTHESIS = SamplingSettings(temperature=1.0, top_p=0.95, max_new_tokens=96)  # prompts the model writes: hotter
SYNTHESIS_TOPIC_TOKENS = 16  # a synthesis topic is a few words: its cap (at most SYNTHESIS's)
REPORT = ZERO_SHOT  # report.html's side-by-side answers: the same greedy answers as the collapse guard's


@dataclass
class VLLMOptions:
    """Engine settings for the vLLM backend.

    Attributes:
        gpu_memory_utilization: the share of GPU memory the engine takes (weights + KV cache);
            on CPU the share of the RAM free when the engine starts that its KV cache takes.
        kv_cache_memory_bytes: the KV cache's size in bytes, instead of sizing it from
            gpu_memory_utilization (on CPU a size set here also skips vLLM's profiling pass).
        max_model_len: prompt + response tokens the engine handles (null: the model's own).
        dtype: the engine's weights; `auto` is the run's dtype (model.compute_dtype, resolved for
            the device).
        enforce_eager: no CUDA graphs (they start slower and hold memory; worth it for long runs).
        tensor_parallel_size: ranks (GPUs) that share one engine, for models one GPU cannot hold.
        sleep_between_rounds: between rounds, offload the engine's weights and drop its KV cache
            so training on the same GPU gets the memory back (vLLM sleep mode: CUDA/ROCm only).
    """

    gpu_memory_utilization: ShareUpToOne = 0.3
    kv_cache_memory_bytes: PositiveInt | None = None
    max_model_len: PositiveInt | None = 2048
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    enforce_eager: bool = True
    tensor_parallel_size: PositiveInt = 1
    sleep_between_rounds: bool = False


@dataclass
class SamplerSettings:
    """What generates a run's answers (`bootstrap.sampler:`).

    Attributes:
        backend: `vllm` (one engine per run), `hf` (transformers generate) or `auto`: vllm where
            it imports (its CPU build included), else hf.
        process: `inline` runs the sampler in the training process; `spawn` in a child process
            that exits before each round's training, so all its memory returns to the OS.
        adapter_sync: how the round's adapter reaches the sampler: `lora` on top of the base,
            `merged` folded into full-precision base weights (base-model speed), `auto` (merged
            unless the hf backend on a GPU has no room for the copy; see factory.resolve_adapter_sync).
        vllm: engine settings for the vLLM backend.
        hf_batch_tokens: the hf backend's batches hold this many tokens (rows x (prompt + new tokens)).
    """

    backend: SamplerName = "vllm"
    process: SamplerProcessMode = "inline"
    adapter_sync: AdapterSync = "auto"
    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    hf_batch_tokens: PositiveInt = 16384

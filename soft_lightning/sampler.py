"""One sampler interface, two backends (sampler_vllm.py, sampler_hf.py) that return the same
record for each prompt, and the choice between them and of how the round's adapter reaches them.

Both report the mean log-probability of the sampled tokens under the *processed* distribution
(after temperature and top-p), so the two backends' numbers mean the same thing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse.typing import NonNegativeFloat, PositiveInt

from soft_lightning.config_types import ShareUpToOne
from soft_lightning.errors import ConfigError

# `vllm`: one engine, the round's LoRA per request; `hf`: transformers generate; `auto`: see resolve_sampler.
SamplerName = Literal["vllm", "hf", "auto"]
# `inline`: in the training process; `spawn`: in a child process that exits after every round.
SamplerProcessMode = Literal["inline", "spawn"]
# How the round's adapter reaches the sampler: `lora` applied on top of the base at every step
# (vLLM's LoRARequest, or the training model's own LoRA); `merged` folded into full-precision
# base weights (decodes at the base model's speed); `auto`: see resolve_adapter_sync.
AdapterSync = Literal["lora", "merged", "auto"]

# vLLM's accepted `max_lora_rank` values (vllm.config.lora.MaxLoRARanks); checked without
# importing vLLM so a bad rank fails in milliseconds.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class SamplingConfig:
    """How responses are sampled (both backends).

    Attributes:
        temperature: sampling temperature; 0 is greedy decoding.
        top_p: nucleus sampling: the smallest set of tokens holding this much probability, in (0, 1].
        max_new_tokens: the response length cap in tokens; an answer that reaches it never ended
            (`finish_reason: length`, see `bootstrap.filters.truncated`).
    """

    temperature: NonNegativeFloat = 0.7
    top_p: ShareUpToOne = 0.95
    max_new_tokens: PositiveInt = 512


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
class GenerationRequest:
    """One prompt of a round, already rendered with principles and in-context examples."""

    id: str
    prompt: str  # the user's plain prompt (what training sees)
    text: str  # the full generation prompt
    icl_ids: list[str]


SAMPLER_FIELDS = ("id", "prompt", "response", "icl_ids", "n_tokens", "finish_reason", "mean_logprob")


def make_record(req: GenerationRequest, response: str, n_tokens: int, finish_reason: str, mean_logprob: float) -> dict:
    return {
        "id": req.id,
        "prompt": req.prompt,
        "response": response,
        "icl_ids": req.icl_ids,
        "n_tokens": int(n_tokens),
        "finish_reason": finish_reason,
        "mean_logprob": float(mean_logprob),
    }


def vllm_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ConfigError(
        f"model.lora_r={rank} is above the largest LoRA rank vLLM serves ({VLLM_LORA_RANKS[-1]}); "
        "lower model.lora_r or use --bootstrap.sampler hf."
    )


def check_vllm_options(options: VLLMOptions, world: int = 1, process: SamplerProcessMode = "inline") -> None:
    """Options the installed vLLM (or this run's ranks) cannot honour, refused before any engine
    or model loads."""
    if world > 1 and options.tensor_parallel_size > 1 and process == "spawn":
        raise ConfigError(
            "bootstrap.vllm.tensor_parallel_size > 1 with several ranks needs bootstrap.sampler_process=inline "
            "(the ranks of a group share one engine in their own processes); set it to inline."
        )
    if world > 1 and world % options.tensor_parallel_size:
        raise ConfigError(
            f"bootstrap.vllm.tensor_parallel_size={options.tensor_parallel_size} must divide the run's "
            f"{world} ranks (each group of that many ranks shares one engine); change either."
        )
    if options.sleep_between_rounds:
        from vllm.platforms import current_platform

        if not current_platform.is_sleep_mode_available():
            raise ConfigError(
                f"bootstrap.vllm.sleep_between_rounds needs vLLM sleep mode, which the "
                f"{current_platform.device_name} platform lacks; set it to false."
            )


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


def resolve_sampler(name: str) -> str:
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


class Sampler:
    """Turns generation requests into records; `model` is the module being trained."""

    name = "base"
    process = "inline"  # where generation runs: this process, or a spawned child (SamplerProcess)
    # Whether every rank must make the same number of `generate` calls (engines that run
    # collectives at every step); ranks then pad with repeated requests.
    lockstep = False

    def __init__(self, sampling: SamplingConfig, stop: list[str], seed: int):
        self.sampling, self.stop, self.seed = sampling, stop, seed

    def generate(self, requests: list[GenerationRequest], *, round_index: int, adapter: Path | None,
                 model, sampling: SamplingConfig | None = None) -> list[dict]:
        """One record per request; `sampling` replaces the run's settings for this call."""
        raise NotImplementedError

    def shard(self, rank: int, world: int) -> tuple[int, int, bool]:
        """Which share of a round this rank generates: (share, shares, whether it writes it).
        One share per rank, unless ranks generate together (vLLM tensor parallelism)."""
        return rank, world, True

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "process": self.process, **asdict(self.sampling), "stop": self.stop,
                "seed": self.seed}

    def start(self) -> float:
        """Do start-up work (an engine) unless done; returns its seconds so rounds are timed apart."""
        return 0.0

    def pause(self) -> None:
        """Between rounds: release what generation holds (a no-op unless a backend can)."""

    def close(self) -> None:
        pass


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

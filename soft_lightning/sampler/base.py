"""The sampler interface every backend (vllm.py, hf.py, process.py) implements: requests in, one
record per request out, from the weights `sync_weights` named; and the settings they share.

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
from soft_lightning.progress import Progress, no_progress

# `vllm`: one engine, the round's LoRA per request; `hf`: transformers generate; `auto`: see resolve_sampler.
SamplerName = Literal["vllm", "hf", "auto"]
# `inline`: in the training process; `spawn`: in a child process that exits after every round.
SamplerProcessMode = Literal["inline", "spawn"]
# How the round's adapter reaches the sampler: `lora` applied on top of the base at every step
# (vLLM's LoRARequest, or the training model's own LoRA); `merged` folded into full-precision
# base weights (decodes at the base model's speed); `auto`: see resolve_adapter_sync.
AdapterSync = Literal["lora", "merged", "auto"]

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
    """Turns generation requests into records, from the weights `sync_weights` last named."""

    name = "base"
    process = "inline"  # where generation runs: this process, or a spawned child (SamplerProcess)
    # Whether every rank must make the same number of `generate` calls (engines that run
    # collectives at every step); ranks then pad with repeated requests.
    lockstep = False

    def __init__(self, sampling: SamplingConfig, stop: list[str], seed: int):
        self.sampling, self.stop, self.seed = sampling, stop, seed
        self.adapter: Path | None = None
        self.model = None

    def sync_weights(self, adapter: Path | None, model=None) -> None:
        """Sample from these weights from now on: `adapter` is the round's saved LoRA folder (None:
        the run's starting weights) for backends that load it; `model` the policy being trained,
        for the inline hf backend, which samples from it in place. A backend loads them when it
        next generates (an engine may not have started yet)."""
        self.adapter, self.model = adapter, model

    def generate(self, requests: list[GenerationRequest], *, round_index: int, sampling: SamplingConfig | None = None,
                 progress: Progress = no_progress) -> list[dict]:
        """One record per request; `sampling` replaces the run's settings for this call;
        `progress(answers, tokens)` is told as answers come in (the calling phase's bar)."""
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

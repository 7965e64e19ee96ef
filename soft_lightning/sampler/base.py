"""The seam between a run and whatever generates its answers: the `Sampler` protocol every backend
(vllm.py, hf.py, process.py) meets, the requests it takes, the records it returns, and `Policy`,
the weights it samples from. Callers build a backend with factory.make_sampler only.

Every backend reports the mean log-probability of the sampled tokens under the *processed*
distribution (after temperature and top-p), so their numbers mean the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from soft_lightning.sampler.settings import SamplingSettings
from soft_lightning.utils.progress import Progress, no_progress


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


@dataclass
class Policy:
    """The weights a sampler answers with: a base model (an HF folder), held in `dtype` on
    `device`, plus the adapter `sync_weights` names. A run's policy is its LightningModule's
    (`SoftModule.policy`); a command's is a model folder.

    `load(adapter=, device=)` (a run's, for a spawned hf sampler with the adapter as LoRA) rebuilds
    the policy model the way training builds it, with a saved adapter (None: the starting weights)
    on a device, and `cast` is
    the dtype Lightning's `-true` precision casts it to.
    """

    source: str
    dtype: str = "float32"
    device: str = "cpu"
    lora_rank: int = 64
    trust_remote_code: bool = False
    load: Callable[..., Any] | None = None
    cast: str | None = None


class Sampler(Protocol):
    """Turns generation requests into records, from the weights `sync_weights` last named."""

    name: str  # the backend

    def sync_weights(self, adapter: Path | None, model=None) -> None:
        """Sample from these weights from now on: `adapter` is the round's saved LoRA folder (None:
        the run's starting weights) for backends that load it; `model` the policy being trained,
        for the inline hf backend, which samples from it in place. A backend loads them when it
        next generates (an engine may not have started yet)."""

    def generate(self, requests: list[GenerationRequest], *, round_index: int,
                 sampling: SamplingSettings | None = None, progress: Progress = no_progress) -> list[dict]:
        """One record per request; `sampling` replaces the sampler's settings for this call;
        `progress(answers, tokens)` is told as answers come in (the calling phase's bar)."""

    def start(self) -> float:
        """Do start-up work (an engine) unless done; returns its seconds so rounds are timed apart."""

    def pause(self) -> None:
        """Between rounds: release what generation holds (a no-op unless a backend can)."""

    def close(self) -> None:
        """Release everything now (an engine, a child process)."""

    def shard(self, rank: int, world: int) -> tuple[int, int, bool]:
        """Which share of a round this rank generates: (share, shares, whether it writes it)."""

    def stop_together(self, stop: bool) -> bool:
        """Whether to stop after this chunk, the same answer on every rank that generates the same
        share (a tensor-parallel group runs collectives in every forward: it stops as one)."""

    def describe(self) -> dict[str, Any]:
        """The settings a round's manifest records."""


class SamplerBase:
    """What the backends share: the settings, the weights last named, and the defaults of the
    protocol's optional steps."""

    name = "base"
    process = "inline"  # where generation runs: this process, or a spawned child (SamplerProcess)

    def __init__(self, sampling: SamplingSettings, stop: list[str], seed: int):
        self.sampling, self.stop, self.seed = sampling, stop, seed
        self.adapter: Path | None = None
        self.model = None

    def sync_weights(self, adapter: Path | None, model=None) -> None:
        self.adapter, self.model = adapter, model

    def shard(self, rank: int, world: int) -> tuple[int, int, bool]:
        """One share per rank, unless ranks generate together (vLLM tensor parallelism)."""
        return rank, world, True

    def stop_together(self, stop: bool) -> bool:
        return stop

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "process": self.process, **asdict(self.sampling), "stop": self.stop,
                "seed": self.seed}

    def start(self) -> float:
        return 0.0

    def pause(self) -> None:
        pass

    def close(self) -> None:
        pass

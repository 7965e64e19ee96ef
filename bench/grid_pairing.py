"""Throughput of one run on all cores against one run per core at once, each pinned to its core with
one torch thread: how to spend a small CPU machine on the experiment grid, whose runs are independent.

    python bench/grid_pairing.py

Runs `configs/demo.yaml` (real vLLM generation, training and validation) once alone, then once per
core at the same time, and prints the wall times and throughput ratio (runs per hour, pinned over
alone); writes bench/results/grid_pairing.json. Torch's result depends on its thread count, so the
pinned runs' answers differ from the alone run's (a different sample, as on another CPU model). Two
processes left to share all cores, with no pinning, were several times slower when tried on the grid.
Run it on a quiet machine.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from demo_runtime import RESULTS, ROOT, run_demo
from precision import cpu_name


def main() -> None:
    cores = sorted(os.sched_getaffinity(0))
    alone = run_demo(ROOT, [])
    print(f"alone on {len(cores)} cores: {json.dumps(alone)}", flush=True)
    with ThreadPoolExecutor(len(cores)) as pool:
        pinned = list(pool.map(lambda core: run_demo(ROOT, [], core), cores))
    for core, run in zip(cores, pinned):
        print(f"pinned to core {core}: {json.dumps(run)}", flush=True)
    slowest = max(run["wall_seconds"] for run in pinned)
    ratio = len(cores) * alone["wall_seconds"] / slowest
    report = {"machine": {"cpu": cpu_name(), "cores": len(cores),
                          "torch_capability": torch.backends.cpu.get_cpu_capability(), "device": "cpu"},
              "config": "configs/demo.yaml", "alone": alone, "pinned": pinned, "throughput_ratio": round(ratio, 2)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grid_pairing.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(cores)} pinned runs at once do {ratio:.2f}x the runs per hour of one run on all {len(cores)} cores "
          f"({cpu_name()}, torch {report['machine']['torch_capability']})")


if __name__ == "__main__":
    main()

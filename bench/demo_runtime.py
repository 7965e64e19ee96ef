"""The demo's wall time (after set-up): `python -m soft_lightning fit --config configs/demo.yaml`
in a fresh out_dir, for this tree and, as the baseline, for an earlier commit checked out into a
temporary git worktree (same machine, same environment, one after the other).

    python bench/demo_runtime.py [--baseline 6781af4]

Prints both runs' wall time and per-round generation seconds and writes
bench/results/demo_runtime.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def run_demo(tree: Path, extra: list[str], core: int | None = None) -> dict:
    """The demo's wall time and per-round timings; with `core`, on that core alone (one torch thread)."""
    out = Path(tempfile.mkdtemp(prefix="soft-demo-"))
    pinned = ["taskset", "-c", str(core)] if core is not None else []
    t0 = time.perf_counter()
    proc = subprocess.run([*pinned, sys.executable, "-m", "soft_lightning", "fit", "--config", "configs/demo.yaml",
                           "--bootstrap.out_dir", str(out), *extra], cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1",
                               **({"OMP_NUM_THREADS": "1"} if core is not None else {})})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"the demo failed in {tree}:\n{proc.stderr[-3000:]}")
    rounds = []
    for r in range(2):
        manifest = json.loads((out / f"round_{r}" / "manifest.json").read_text())
        rounds.append({"generation_seconds": manifest["timings"]["generation_seconds"],
                       "tokens_per_second": manifest["timings"]["tokens_per_second"],
                       "train_seconds": manifest.get("training", {}).get("train_s")})
    return {"wall_seconds": round(wall, 1), "rounds": rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="6781af4", help="the commit to compare with")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    results = {"this tree": {"commit": commit.stdout.strip(), **run_demo(ROOT, [])}}
    print("this tree:", json.dumps(results["this tree"]), flush=True)
    worktree = Path(tempfile.mkdtemp(prefix="soft-baseline-")) / "tree"
    subprocess.run(["git", "worktree", "add", "-f", "--detach", str(worktree), args.baseline], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        # The baseline predates the link of trainer.default_root_dir to bootstrap.out_dir.
        results["baseline"] = {"commit": args.baseline,
                               **run_demo(worktree, ["--trainer.default_root_dir", str(worktree / "logs")])}
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    print("baseline:", json.dumps(results["baseline"]), flush=True)
    ratio = results["baseline"]["wall_seconds"] / results["this tree"]["wall_seconds"]
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu"},
              "config": "configs/demo.yaml (2 rounds x 24 prompts x 128 new tokens, vLLM)", "results": results,
              "speedup": round(ratio, 2), "target_seconds": 180}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo_runtime.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"speed-up {ratio:.2f}x; this tree {results['this tree']['wall_seconds']} s (target <= 180 s)")


if __name__ == "__main__":
    main()

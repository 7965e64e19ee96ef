"""`python -m soft_lightning report` on a finished run, in a fresh process each: showing the run's
own zero-shot answers with their marks (the default) against answering pool prompts with every
model (`--held_out pool`, the way the report worked before, and its baseline here), each on a
fresh copy of the run so nothing is cached. Target: ≤ 30 s on 2 cores.

    python bench/report_runtime.py RUN_DIR [--answers 6]      (RUN_DIR: a finished demo run)

Prints both wall times and writes bench/results/report_runtime.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def timed_report(run: Path, extra: list[str]) -> float:
    copy = Path(tempfile.mkdtemp(prefix="soft-report-")) / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*held_out.json", "report.html", "checkpoints"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "soft_lightning", "report", str(copy), *extra], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    shutil.rmtree(copy.parent, ignore_errors=True)
    if proc.returncode:
        raise SystemExit(f"report failed:\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--answers", type=int, default=6)
    args = ap.parse_args()
    answers = ["--answers", str(args.answers)]
    ours = timed_report(args.run, answers)
    baseline = timed_report(args.run, [*answers, "--held_out", "pool"])
    rounds = len(list(args.run.glob("round_*/adapter")))
    result = {"name": "report_runtime", "run": str(args.run), "models": rounds + 1, "answers": args.answers,
              "zero_shot_seconds": round(ours, 1), "pool_seconds": round(baseline, 1),
              "speedup": round(baseline / ours, 2), "target_seconds": 30, "met": ours <= 30,
              "machine": {"device": "cpu", "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "report_runtime.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())

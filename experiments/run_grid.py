"""The experiment grid behind SOFT's four claims, on the demo model, and its write-up.

Methods (same prompt budget, same optimizer steps, see experiments/configs/):
- `single_round`: all 320 prompts in one round (self-alignment without bootstrapping);
- `soft`: 5 rounds of 64, in-context examples drawn per prompt (SOFT);
- `fixed_icl`: as `soft`, the same 3 examples for every prompt;
- `soft_plus`: as `soft`, easy-to-hard across and within rounds (SOFT+).

Each run is `python -m soft_lightning fit` in experiments/runs/<method>-seed<k>; a finished run is
skipped and an unfinished one resumed with `--ckpt_path last`, so the grid can span sessions
(stop it any time). Validation: the first 100 TruthfulQA items every round (../shared/data, else
the bundled set). Then experiments/README.md gets a table and a plot from the round stores.

    python experiments/run_grid.py [--seeds 0 1] [--methods soft fixed_icl ...] [--full-eval] [--report-only]

`--full-eval` then scores each finished run's best round (SOFT's first and last too; the base
model once) with lm-evaluation-harness on every item of the validation file (MC1, bf16; 3.5 min
a model on 2 quiet cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "experiments"
TRUTHFULQA = ROOT.parent / "shared" / "data" / "truthfulqa_mc.jsonl"
METHODS = {  # in the order they run: SOFT first, the reference of every claim
    "soft": [],
    "single_round": [HERE / "configs" / "single_round.yaml"],
    "fixed_icl": [ROOT / "configs" / "fixed_icl.yaml"],
    "soft_plus": [ROOT / "configs" / "soft_plus.yaml"],
}

sys.path.insert(0, str(ROOT))
from soft_lightning.store import RoundStore  # noqa: E402  (the checkout, not an installed copy)


def run_dir(method: str, seed: int) -> Path:
    return HERE / "runs" / f"{method}-seed{seed}"


def planned_rounds(out: Path) -> int | None:
    plan = out / "plan.json"
    return len(json.loads(plan.read_text())["rounds"]) if plan.is_file() else None


def finished(out: Path) -> bool:
    rounds = planned_rounds(out)
    return rounds is not None and len(RoundStore(out).finished_rounds()) == rounds


def run(method: str, seed: int, val_path: Path) -> None:
    out = run_dir(method, seed)
    if finished(out):
        print(f"[grid] {out.name}: finished, skipped", flush=True)
        return
    configs = [ROOT / "configs" / "demo.yaml", HERE / "configs" / "grid.yaml", *METHODS[method]]
    cmd = [sys.executable, "-m", "soft_lightning", "fit", *[a for c in configs for a in ("--config", str(c))],
           "--seed_everything", str(seed), "--bootstrap.seed", str(seed), "--bootstrap.out_dir", str(out),
           "--data.val_path", str(val_path)]
    if (out / "plan.json").is_file():
        cmd += ["--ckpt_path", "last"]
    print(f"[grid] {out.name}: {'resuming' if '--ckpt_path' in cmd else 'starting'}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"[grid] {out.name}: done in {time.perf_counter() - t0:.0f} s", flush=True)


def full_eval(out: Path, rounds: str, val_path: Path) -> None:
    """lm-evaluation-harness on every item of the validation file for the run's chosen rounds
    (MC1, bf16; a round already scored on this file is skipped)."""
    from soft_lightning.plan import sha256_file

    sha, store = sha256_file(val_path), RoundStore(out)
    wanted = [r for r in rounds.split(",") if not _scored(r, store, sha)]
    if not wanted:
        print(f"[grid] {out.name}: {rounds} already scored on {val_path.name}", flush=True)
        return
    cmd = [sys.executable, "-m", "soft_lightning", "evaluate", str(out), "--rounds", ",".join(wanted),
           "--data", str(val_path), "--tasks", "mc1", "--dtype", "bfloat16", "--batch_size", "32"]
    print(f"[grid] {out.name}: lm-eval on {','.join(wanted)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"[grid] {out.name}: lm-eval done in {time.perf_counter() - t0:.0f} s", flush=True)


def _scored(name: str, store: RoundStore, sha: str) -> bool:
    path = store.lm_eval_path(name if name == "base" else store.round_named(name, "--full-eval"))
    if not path.is_file():
        return False
    result = json.loads(path.read_text())
    return result.get("data_sha256") == sha and result["limit"] is None and "mc1" in result["tasks"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--full-eval", action="store_true",
                    help="after the runs, score each finished run's best round (and, once, the base model) with "
                         "lm-evaluation-harness on the whole validation file")
    ap.add_argument("--report-only", action="store_true", help="only rewrite experiments/README.md")
    args = ap.parse_args()
    val_path = TRUTHFULQA if TRUTHFULQA.is_file() else ROOT / "soft_lightning" / "assets" / "demo_mc.jsonl"
    if not args.report_only:
        for seed in args.seeds:
            for method in args.methods:
                run(method, seed, val_path)
        if args.full_eval:
            done = [run_dir(m, s) for s in args.seeds for m in args.methods if finished(run_dir(m, s))]
            from soft_lightning.plan import sha256_file

            sha = sha256_file(val_path)
            base_scored = any(_scored("base", RoundStore(out), sha) for out in HERE.glob("runs/*"))
            for i, out in enumerate(done):  # SOFT's first and last rounds too, for the collapse claim
                rounds = "0,best,last" if out.name.startswith("soft-seed") else "best"
                full_eval(out, rounds if base_scored or i else f"base,{rounds}", val_path)
    from write_up import write_report  # experiments/ is this script's folder

    val_items = yaml.safe_load((HERE / "configs" / "grid.yaml").read_text())["data"]["val_limit"]
    write_report(HERE, {m: [run_dir(m, s) for s in args.seeds] for m in METHODS}, val_path, val_items)


if __name__ == "__main__":
    main()

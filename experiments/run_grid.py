"""The experiment grid behind SOFT's claims on the demo model and the bundled `rules` task, and its write-up.

Steps, each resumable (a finished step is skipped, so the grid can span sessions; stop it any time):

1. `premise`: does the base model keep the rules more often few-shot (principles + 3 examples,
   as SOFT generates) than zero-shot? Greedy answers to the 100 held-out prompts (validation +
   test), both ways, paired. Without a few-shot advantage there is nothing to bootstrap, and the
   grid stops there (unless `--force`).
2. runs (same prompts budget, same optimizer steps; experiments/configs/):
   - `soft`: 4 rounds of 64 prompts, in-context examples drawn per prompt (SOFT);
   - `single_round`: all 256 prompts in one round (self-alignment without bootstrapping);
   - `fixed_icl`: as `soft`, the same 3 examples for every prompt;
   - `soft_plus`: as `soft`, easy-to-hard across and within rounds (SOFT+; the same prompts).
   Each is `python -m soft_lightning fit` in experiments/runs/<method>-seed<k> (resumed with
   `--ckpt_path last` if unfinished). Zero-shot adherence on the 40 validation prompts picks
   each run's best round; nothing is chosen on the test split.
3. `test`: `evaluate --tasks principles` on the 60 test prompts for the base model, each run's
   best round, and SOFT's rounds 0 and last (claim 4).
4. `--truthfulqa` (optional): lm-evaluation-harness MC1 on all 817 TruthfulQA items (../shared/data)
   for the base model and each best round: a does-no-harm check, never used to pick a round.

Then experiments/README.md, results.json and rounds.png are written from the stores.

    python experiments/run_grid.py [--seeds 0 1] [--methods soft ...] [--truthfulqa] [--force] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "experiments"
TRUTHFULQA = ROOT.parent / "shared" / "data" / "truthfulqa_mc.jsonl"
METHODS = {  # in the order they run: SOFT first, the reference of every claim
    "soft": [],
    "single_round": [HERE / "configs" / "single_round.yaml"],
    "fixed_icl": [ROOT / "configs" / "fixed_icl.yaml"],
    "soft_plus": [ROOT / "configs" / "soft_plus.yaml"],
}
TIMINGS = HERE / "runs" / "timings.json"  # wall seconds of every step, kept across sessions

sys.path.insert(0, str(ROOT))
from soft_lightning.rounds.store import RoundStore  # noqa: E402  (the checkout, not an installed copy


def run_dir(method: str, seed: int) -> Path:
    return HERE / "runs" / f"{method}-seed{seed}"


def finished(out: Path) -> bool:
    plan = out / "plan.json"
    return plan.is_file() and len(RoundStore(out).finished_rounds()) == len(json.loads(plan.read_text())["rounds"])


def cpu() -> str:
    """The CPU the figures were measured on: machines differ, and bf16 speed with them."""
    import torch

    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    return f"{names[0] if names else 'an unnamed CPU'} (torch's {torch.backends.cpu.get_cpu_capability()} kernels)"


def timed(name: str, cmd: list[str]) -> None:
    """Run `cmd` in the checkout and add its wall seconds to the timings file."""
    print(f"[grid] {name}: {' '.join(cmd[2:6])} ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    seconds = time.perf_counter() - t0
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {}
    timings[name] = round(timings.get(name, 0) + seconds, 1)
    timings.setdefault("_cpu", cpu())
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps(timings, indent=1) + "\n")
    print(f"[grid] {name}: done in {seconds:.0f} s", flush=True)


def premise(force: bool) -> bool:
    """Step 1 in a child process (vLLM's engine): True when the grid should go on."""
    path = HERE / "runs" / "premise.json"
    if not path.is_file():
        timed("premise", [sys.executable, str(HERE / "premise.py"), str(path)])
    result = json.loads(path.read_text())
    print(f"[grid] premise: few-shot {result['few_shot']['rate']:.3f} vs zero-shot {result['zero_shot']['rate']:.3f}, "
          f"McNemar p = {result['p']:.3g}", flush=True)
    if result["advantage"] or force:
        return True
    print("[grid] no few-shot advantage: the grid stops here (--force runs it anyway)", flush=True)
    return False


def run(method: str, seed: int) -> None:
    out = run_dir(method, seed)
    if finished(out):
        return
    configs = [ROOT / "configs" / "demo.yaml", HERE / "configs" / "grid.yaml", *METHODS[method]]
    cmd = [sys.executable, "-m", "soft_lightning", "fit", *[a for c in configs for a in ("--config", str(c))],
           "--seed_everything", str(seed), "--bootstrap.seed", str(seed), "--bootstrap.out_dir", str(out)]
    timed(out.name, cmd + (["--ckpt_path", "last"] if (out / "plan.json").is_file() else []))


def evaluate(out: Path, rounds: list[str], name: str, extra: list[str], done) -> None:
    """`python -m soft_lightning evaluate` on the rounds of `out` that `done(round)` says are not scored."""
    store = RoundStore(out)
    wanted = [r for r in dict.fromkeys(rounds) if not done(r if r == "base" else store.round_named(r, "grid"), store)]
    if wanted:
        timed(f"{name} {out.name}", [sys.executable, "-m", "soft_lightning", "evaluate", str(out), "--rounds",
                                     ",".join(wanted), *extra])


def tested(r, store: RoundStore) -> bool:
    path = store.principles_eval_path(r)
    return path.is_file() and json.loads(path.read_text())["prompts"].endswith("rules_test.jsonl")


def truthful(r, store: RoundStore) -> bool:
    path = store.lm_eval_path(r)
    return path.is_file() and json.loads(path.read_text())["limit"] is None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--truthfulqa", action="store_true", help="lm-eval MC1 on TruthfulQA for the base and best rounds")
    ap.add_argument("--force", action="store_true", help="run the grid even without a few-shot advantage")
    ap.add_argument("--report-only", action="store_true", help="only rewrite experiments/README.md")
    args = ap.parse_args()
    if not args.report_only and premise(args.force):
        for seed in args.seeds:
            for method in args.methods:
                run(method, seed)
                out = run_dir(method, seed)
                first = method == args.methods[0] and seed == args.seeds[0]
                rounds = (["base"] if first else []) + (["0", "best", "last"] if method == "soft" else ["best"])
                evaluate(out, rounds, "test", ["--tasks", "principles", "--prompts", "rules-test"], tested)
                if args.truthfulqa and TRUTHFULQA.is_file():  # the base and the best rounds: does it harm?
                    evaluate(out, ["base", "best"] if first else ["best"], "truthfulqa",
                             ["--tasks", "mc1", "--data", str(TRUTHFULQA), "--batch_size", "32"], truthful)
    from write_up import write_report  # experiments/ is this script's folder

    # An unfinished run (a grid stopped mid-way) is left out; claims pair the arms seed by seed, and the
    # grid runs seed after seed, so each method's finished runs are a prefix of the seeds: they pair up.
    write_report(HERE, {m: [run_dir(m, s) for s in args.seeds if finished(run_dir(m, s))] for m in METHODS},
                 json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {})


if __name__ == "__main__":
    main()

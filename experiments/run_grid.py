"""The experiment grid behind SOFT's claims on the demo model and the bundled `rules` task.

The tests, arms, seeds and picks are fixed in experiments/PREREGISTRATION.md (committed before any
run). Per run (arm x seed), each step resumable, so the grid spans sessions and machines:

1. `fit`: `python -m soft_lightning fit` with configs/demo.yaml + experiments/configs/grid.yaml +
   the arm's overlay, into experiments/runs/<arm>-seed<k>/ (`--ckpt_path last` if unfinished);
2. `test`: `evaluate --tasks principles` of every trained round (and the base model, in the grid's
   first run) on the test prompts, with the template control (the echo control: once, before the
   first run, into experiments/results/controls/);
3. `truthfulqa` (with `--truthfulqa`): TruthfulQA MC1 (../shared/data) of the round the write-up
   picks (validation, ties to the later round) and of the base model once: does it harm?
4. `export`: every answer and signal into experiments/results/<arm>-seed<k>/ (results.py): what
   git keeps and the write-up reads. Commit that folder as soon as it is written.

Runs go seed by seed through the arms in ARMS's order, claims 1 and 4 first. Runs are independent: on
a small machine, one grid process per core, each pinned with disjoint runs, does more runs an hour
than one on all cores (bench/grid_pairing.py measures it). A run's `cpu`, read at export, records
its pinning: resume a run pinned as it began.

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/run_grid.py --arms soft --seeds 6 7 &
    OMP_NUM_THREADS=1 taskset -c 1 python experiments/run_grid.py --arms same_steps --seeds 6 7 &

    python experiments/run_grid.py [--arms soft ...] [--seeds 0 1 ...] [--truthfulqa] [--dry]
    python experiments/run_grid.py --report-only   (experiments/README.md from experiments/results/ alone;
                                                    the same as python experiments/write_up.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "experiments"
TRUTHFULQA = ROOT.parent / "shared" / "data" / "truthfulqa_mc.jsonl"
# arm: (overlays and arguments after demo.yaml + grid.yaml, seeds); claims 1 and 4's arms first.
ARMS = {
    "soft": ([], range(8)),
    "single_round": ([HERE / "configs" / "single_round.yaml"], range(8)),
    "same_steps": ([HERE / "configs" / "same_steps.yaml"], range(8)),
    "soft_plus": ([ROOT / "configs" / "soft_plus.yaml"], range(8)),
    "fixed_icl": ([ROOT / "configs" / "fixed_icl.yaml"], range(8)),
    "soft_nf4": (["--model.quantization", "nf4"], range(8)),
    "single_round_nf4": ([HERE / "configs" / "single_round.yaml", "--model.quantization", "nf4"], range(8)),
}
RUNS, RESULTS = HERE / "runs", HERE / "results"

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from results import export_control, export_run, load_run, pick  # noqa: E402
from write_up import write_report  # noqa: E402

from soft_lightning.rounds.store import RoundStore  # noqa: E402  (the checkout, not an installed copy)
from soft_lightning.utils.files import write_json_atomic  # noqa: E402


def name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def finished(out: Path) -> bool:
    plan = out / "plan.json"
    return plan.is_file() and len(RoundStore(out).finished_rounds()) == len(json.loads(plan.read_text())["rounds"])


def cpu() -> str:
    """The CPU the figures were measured on: machines differ, and bf16 speed with them. A run pinned to
    fewer cores than the machine has (bench/grid_pairing.py) says so: its threads change its numbers
    too, and its wall hours are not a whole machine's."""
    import torch

    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    used, cores = len(os.sched_getaffinity(0)), os.cpu_count()
    pinned = f"; pinned to {used} of {cores} cores, torch threads {torch.get_num_threads()}" if used < cores else ""
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"{names[0] if names else 'an unnamed CPU'} (torch's {kernels} kernels{pinned})"


def commit() -> str:
    """The checkout's commit (with `+dirty` when it has uncommitted changes to tracked files)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "soft_lightning", "callbacks", "configs",
                            "experiments/configs"], cwd=ROOT).returncode
    return head + ("+dirty" if dirty else "")


def timed(seconds: dict, step: str, cmd: list[str], state: Path | None = None, every: float = 60) -> None:
    """Run `cmd` in the checkout, adding its wall seconds to `seconds[step]`. With `state`, the sums
    are saved there every `every` seconds, so a step killed with its session (and resumed in the
    next) still counts the time it ran, less `every` at most."""
    print(f"[grid] {step}: {' '.join(str(c) for c in cmd[2:5])} ...", flush=True)
    t0, before = time.perf_counter(), seconds.get(step, 0)

    def save() -> None:
        seconds[step] = round(before + time.perf_counter() - t0, 1)
        if state is not None:
            write_json_atomic(state, seconds)

    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT)
    try:
        while True:
            try:
                returncode = proc.wait(timeout=every)
                break
            except subprocess.TimeoutExpired:
                save()
    except BaseException:
        proc.kill()
        raise
    save()
    if returncode:
        raise subprocess.CalledProcessError(returncode, cmd)
    print(f"[grid] {step}: done in {time.perf_counter() - t0:.0f} s", flush=True)


def base_tested() -> bool:
    """Whether some run, here or committed, holds the base model's test answers (greedy: one is
    enough, and the first scored is the control row: PREREGISTRATION.md, deviation of 2026-12-05)."""
    return any((out / "base_principles_eval.json").is_file() for out in RUNS.glob("*-seed*")) or any(
        row["split"] == "test" and row["round"] == "base"
        for run in RESULTS.glob("*-seed*") for row in load_run(run)[1])


def base_truthfulqa_scored() -> bool:
    """Whether some run, here or committed, holds the base model's TruthfulQA MC1 scores."""
    return any(RUNS.glob("*/base_lm_eval.json")) or any(
        "base" in json.loads((run / "run.json").read_text())["truthfulqa_mc1"] for run in RESULTS.glob("*-seed*"))


def run_one(arm: str, seed: int, truthfulqa: bool) -> None:
    out, target = RUNS / name(arm, seed), RESULTS / name(arm, seed)
    if (target / "run.json").is_file():
        return
    state = out / "grid_seconds.json"  # wall seconds per step, across restarts
    seconds = json.loads(state.read_text()) if state.is_file() else {}
    overlays = [ROOT / "configs" / "demo.yaml", HERE / "configs" / "grid.yaml"]
    extra = ARMS[arm][0]
    configs = [a for c in overlays + [e for e in extra if isinstance(e, Path)] for a in ("--config", c)]
    if not finished(out):
        timed(seconds, "fit", [sys.executable, "-m", "soft_lightning", "fit", *configs,
                               *[e for e in extra if not isinstance(e, Path)], "--seed_everything", seed,
                               "--bootstrap.seed", seed, "--bootstrap.out_dir", out,
                               *(["--ckpt_path", "last"] if (out / "plan.json").is_file() else [])], state)
    store = RoundStore(out)
    untested = [str(r) for r in store.finished_rounds() if not store.principles_eval_path(r).is_file()]
    if not base_tested():
        untested.insert(0, "base")
    if untested:
        timed(seconds, "test", [sys.executable, "-m", "soft_lightning", "evaluate", out, "--tasks", "principles",
                                "--rounds", ",".join(untested)], state)
    if truthfulqa and TRUTHFULQA.is_file():
        picked = pick({r: store.read_zero_shot(r)["quality"]["aligned"]["rate"] for r in store.finished_rounds()})
        wanted = [r for r in ([] if base_truthfulqa_scored() else ["base"]) + [str(picked)]
                  if not store.lm_eval_path(r).is_file()]
        if wanted:
            timed(seconds, "truthfulqa", [sys.executable, "-m", "soft_lightning", "evaluate", out, "--tasks", "mc1",
                                          "--data", TRUTHFULQA, "--batch_size", "32", "--rounds", ",".join(wanted)],
                  state)
    export_run(out, target, arm=arm, seed=seed, commit=commit(), cpu=cpu(), seconds=seconds)
    print(f"[grid] {name(arm, seed)}: exported to {target}; commit it", flush=True)


def score_echo() -> None:
    """The echo control on the test prompts (PREREGISTRATION.md's control rows), once: its answers
    depend on the prompts alone. The template control comes with every run's `test` step."""
    target = RESULTS / "controls"
    if (target / "echo.json").is_file():
        return
    seconds: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        scored = Path(tmp) / "echo.jsonl"
        timed(seconds, "echo control", [sys.executable, "-m", "soft_lightning", "score", "--control", "echo",
                                        "--out", scored])
        export_control(scored, target, {"commit": commit(), "cpu": cpu(), "seconds": seconds})
    print(f"[grid] echo control: exported to {target}; commit it", flush=True)


def own_callbacks() -> None:
    """Refuse to run another checkout's code: an editable install maps `soft_lightning.callbacks`
    to the callbacks/ folder of the checkout it was made from, so a second checkout (a worktree at
    the grid's commit) would import that one's callbacks beside its own package."""
    origin = Path(importlib.util.find_spec("soft_lightning.callbacks").origin).resolve()
    if ROOT.resolve() not in origin.parents:
        raise SystemExit(f"soft_lightning.callbacks resolves to {origin.parent}, outside this checkout ({ROOT}): the "
                         f"grid would run another checkout's callbacks; link this one's: ln -s ../callbacks "
                         f"{ROOT / 'soft_lightning' / 'callbacks'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--truthfulqa", action="store_true", help="TruthfulQA MC1 of the picked round and the base")
    ap.add_argument("--dry", action="store_true", help="list the runs left, in order, and stop")
    ap.add_argument("--report-only", action="store_true", help="only rebuild experiments/README.md from results/")
    args = ap.parse_args()
    if args.report_only:
        return write_report()
    todo = [(arm, seed) for seed in args.seeds for arm in args.arms if seed in ARMS[arm][1]
            and not (RESULTS / name(arm, seed) / "run.json").is_file()]
    print(f"[grid] {len(todo)} runs left: {', '.join(name(*t) for t in todo)}", flush=True)
    if todo and not args.dry:
        own_callbacks()
        score_echo()
    for arm, seed in [] if args.dry else todo:
        run_one(arm, seed, args.truthfulqa)


if __name__ == "__main__":
    main()

"""The experiment write-up: its statistics, and experiments/README.md rebuilt from the committed
results alone (what a fresh clone can check)."""

import math
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers.cli import ROOT

sys.path[:0] = [str(ROOT / "experiments")]
import audit  # noqa: E402
import run_grid  # noqa: E402
import write_up  # noqa: E402
from results import Run, pick  # noqa: E402

AUDIT = ROOT / "experiments" / "audit"


def test_validation_picks_the_highest_round_and_ties_go_to_the_later():
    assert pick({0: 0.1, 1: 0.5, 2: 0.5, 3: 0.4}) == 2
    assert pick({0: 0.3}) == 0


def test_the_sign_flip_test_is_exact_over_seeds():
    assert write_up.signflip_p([0.1] * 8) == pytest.approx(2 / 256), "all 8 seeds one way: the smallest p"
    assert write_up.signflip_p([0.1] * 5) == pytest.approx(2 / 32)
    assert write_up.signflip_p([0.2, -0.2, 0.2, -0.2]) == 1.0
    assert [write_up.smallest_p(n) for n in (0, 1, 8)] == [1.0, 1.0, pytest.approx(2 / 256)], "a p, never above 1"


def test_the_intervals_count_the_seeds_spread_and_a_prompt_shared_by_the_seeds():
    alike = [np.full(150, 0.3) for _ in range(8)]
    for interval in (write_up.hierarchical_interval, write_up.crossed_interval):
        assert interval(alike) == pytest.approx((0.3, 0.3)), "no spread anywhere: no width"
    spread = [np.full(150, v) for v in (-0.2, 0.0, 0.1, 0.3, 0.5, 0.6, -0.1, 0.4)]
    low, high = write_up.crossed_interval(spread)
    assert low < np.mean([d[0] for d in spread]) < high and high - low > 0.2, "the seeds' spread counts"
    shared = [np.tile([1.0, 0.0], 75) for _ in range(8)]  # a prompt's difference is the same in every seed
    nested, crossed = write_up.hierarchical_interval(shared), write_up.crossed_interval(shared)
    assert crossed[1] - crossed[0] > 2 * (nested[1] - nested[0]), "the seeds share prompts: resample them once"
    low, high = write_up.seed_interval([0.0, 1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((1.5 - 2.054, 1.5 + 2.054), abs=1e-3), "t(0.975, 3) × SD / √4"


def test_the_power_line_is_the_exact_sign_flip_tests():
    from scipy.stats import norm

    # At α = 0.01 over 8 seeds only "all 8 one way" rejects, so power = Φ(δ/σ)⁸: 80% needs δ = 1.92 σ.
    assert write_up.detectable(1.0, 8, 0.01) == pytest.approx(norm.ppf(0.8 ** (1 / 8)), abs=0.03)
    assert write_up.detectable(0.269, 5, 0.01) == math.inf, "5 seeds' smallest sign-flip p (1/16) misses 0.01"
    for alpha in (0.05, 0.01):  # falling with the seeds, across the switch from the simulation to the t line
        needs = [write_up.detectable(1.0, n, alpha) for n in range(6, write_up.EXACT_UP_TO + 3)]
        assert all(a > b for a, b in zip(needs, needs[1:]) if a != math.inf), (alpha, needs)
    assert write_up.seeds_needed(0.01, 0.5, 0.01) == 8, "a huge effect still needs the seeds the sign-flip test needs"


def test_a_signals_auc_against_hand_grades_counts_ties_as_half_and_skips_missing_values():
    assert write_up.auc([(0.9, True), (0.1, False), (0.2, False)]) == (1.0, 1, 3)
    assert write_up.auc([(0.1, True), (0.9, False)]) == (0.0, 1, 2)
    assert write_up.auc([(True, True), (True, False), (False, False), (None, True)]) == (0.75, 1, 3)
    assert write_up.auc([(1.0, False)]) == (None, 0, 1)


def test_copying_counts_a_content_3gram_of_the_examples_only_where_the_prompt_lacks_it():
    examples = ["Summary: drink water.\n3. Ask a doctor if you have kidney conditions."]
    records = [{"prompt": "Is it safe to run?", "response": "If you have a leg, ask a doctor."},
               {"prompt": "Should I ask a doctor first?", "response": "Yes, ask a doctor."},  # the prompt has it
               {"prompt": "Why?", "response": "If you have time, you need it."},  # function words only
               {"prompt": "Hi", "response": "Drink water daily; ask a doctor."}]
    assert write_up.most_copied(records, examples) == (0.5, "ask a doctor")
    assert write_up.most_copied(records[2:3], examples) == (0.0, "")


@pytest.mark.skipif(not any((ROOT / "experiments" / "results").rglob("run.json")), reason="no committed results")
def test_the_write_up_is_rebuilt_from_the_committed_results_alone(tmp_path):
    shutil.copytree(ROOT / "experiments" / "results", tmp_path / "results")
    shutil.copytree(AUDIT, tmp_path / "audit")
    write_up.write_report(tmp_path)
    assert (tmp_path / "README.md").read_text() == (ROOT / "experiments" / "README.md").read_text(), \
        "experiments/README.md is stale: run python experiments/write_up.py"


@pytest.mark.skipif(not any((ROOT / "experiments" / "results").rglob("run.json")), reason="no committed results")
def test_every_committed_run_and_control_answers_the_same_test_prompts():
    """The crossed interval pairs prompts across seeds by position, so every test round holds one id set."""
    runs = write_up.load(ROOT / "experiments" / "results")
    ids = {frozenset(marks) for arm in runs.values() for run in arm.values() for marks in run.test.values()}
    ids |= {frozenset(answers) for _, answers in write_up.load_controls(ROOT / "experiments" / "results" /
                                                                         "controls").values()}
    assert len(ids) == 1 and len(next(iter(ids))) == 154, sorted(map(len, ids))


@pytest.mark.skipif(not any((ROOT / "experiments" / "results" / "single_round-seed0").glob("run.json")),
                    reason="no committed single-round run")
def test_an_arm_with_no_run_yet_is_paced_like_the_arm_it_varies():
    """A single round in nf4 is estimated at the single round's hours, not SOFT's eight rounds."""
    runs = write_up.load(ROOT / "experiments" / "results")
    runs = {arm: runs[arm] for arm in ("soft", "single_round")}
    rows = {line.split(" | ")[0].strip("| "): line for line in write_up.status_lines(runs) if line.startswith("| ")}
    single = [r for r in runs["single_round"].values() if r.facts["cpu"] == runs["soft"][0].facts["cpu"]]
    pace = sum(sum(r.facts["seconds"].values()) for r in single) / len(single) / 3600
    assert rows["single_round_nf4"].endswith(f"| ≈{8 * pace:.1f} |"), rows["single_round_nf4"]
    assert not rows["soft_plus"].endswith(f"| ≈{8 * pace:.1f} |")


@pytest.mark.skipif(not (AUDIT / "grades.jsonl").is_file(), reason="no committed hand grades")
def test_the_hand_graded_sample_is_the_preregistered_draw_blind_and_graded_once_each(tmp_path):
    import json

    runs = write_up.load(ROOT / "experiments" / "results")
    audit.write_sheet(runs, tmp_path / "drawn")
    for name in ("sheet.md", "key.json"):
        assert (tmp_path / "drawn" / name).read_bytes() == (AUDIT / name).read_bytes(), f"{name}: not the draw"
    key = json.loads((AUDIT / "key.json").read_text())
    sheet = (AUDIT / "sheet.md").read_text()
    assert not any(name in sheet for name in ("single_round", "same_steps", "soft-seed", "aligned")), "not blind"
    assert len(audit.graded(AUDIT)) == len(key)
    shutil.copy(AUDIT / "key.json", tmp_path / "key.json")
    (tmp_path / "grades.jsonl").write_text("".join((AUDIT / "grades.jsonl").read_text().splitlines(True)[1:]))
    with pytest.raises(SystemExit, match="grade each label of key.json once"):
        audit.graded(tmp_path)
    with pytest.raises(SystemExit, match="drawing it again would unblind it"):
        audit.write_sheet({}, tmp_path)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not shutil.which("taskset"), reason="needs 2 cores and taskset")
def test_a_run_pinned_to_one_core_records_its_pinning_and_keeps_its_cpu_kind():
    """One grid process per core (bench/grid_pairing.py): the run's `cpu` says so, and the claims still
    pair its seeds by the kernels it ran with."""
    code = "import run_grid; print(run_grid.cpu())"
    alone, pinned = (subprocess.run([*prefix, sys.executable, "-c", code], cwd=ROOT / "experiments", text=True,
                                    capture_output=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
                                    ).stdout.strip() for prefix in ([], ["taskset", "-c", "0"]))
    assert "pinned" not in alone and pinned.endswith(f"; pinned to 1 of {os.cpu_count()} cores, torch threads 1)")
    kinds = {Run.cpu_kind.fget(SimpleNamespace(facts={"cpu": cpu})) for cpu in (alone, pinned)}
    assert len(kinds) == 1 and kinds <= {"AVX512", "AVX2", "DEFAULT"}, kinds


def test_a_step_killed_with_its_session_keeps_the_seconds_it_ran(tmp_path):
    """A session's end kills the grid and its step at once: the step's seconds so far are on disk,
    and the resumed step adds to them."""
    import json
    import signal
    import time

    state = tmp_path / "grid_seconds.json"
    code = (f"import run_grid, sys; run_grid.timed({{'test': 5.0}}, 'fit', [sys.executable, '-c', "
            f"'import time; time.sleep(60)'], run_grid.Path({str(state)!r}), every=0.2)")
    grid = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT / "experiments", start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (state.is_file() and json.loads(state.read_text()).get("fit", 0) >= 1.0):
            assert grid.poll() is None and time.monotonic() < deadline, "the step's seconds never reached the disk"
            time.sleep(0.1)
    finally:
        os.killpg(grid.pid, signal.SIGKILL)
        grid.wait(timeout=30)
    seconds = json.loads(state.read_text())
    assert seconds["test"] == 5.0 and seconds["fit"] >= 1.0
    before = seconds["fit"]
    run_grid.timed(seconds, "fit", [sys.executable, "-c", "import time; time.sleep(0.3)"], state)  # > 0.1 s rounding
    assert json.loads(state.read_text()) == seconds and seconds["fit"] > before
    with pytest.raises(subprocess.CalledProcessError):
        run_grid.timed(seconds, "fit", [sys.executable, "-c", "raise SystemExit(3)"], state)


@pytest.mark.slow
def test_a_finished_run_exports_and_the_write_up_reads_it_back(tiny_model, tmp_path):
    """A real tiny run, its rounds scored on test, exported: the answers come back with their
    marks, and the write-up's rates are the evaluate command's."""
    import json

    from results import export_control, export_run, load_controls, load_run

    from tests.helpers.cli import ok_here, run_cli, tiny_run_args

    out = tmp_path / "run"
    result = run_cli(*tiny_run_args(tiny_model, out, "hf"))
    assert result.returncode == 0, result.stderr[-3000:]
    ok_here("evaluate", str(out), "--tasks", "principles", "--rounds", "base,0,1", "--limit", "3", "--safety", "null",
            "--dtype", "float32")
    facts = export_run(out, tmp_path / "results" / "soft-seed0", arm="soft", seed=0, commit="c0ffee", cpu="this CPU",
                       seconds={"fit": 1.0})
    again, rows = load_run(tmp_path / "results" / "soft-seed0")
    assert again == json.loads(json.dumps(facts)) and again["manifests"]["1"]["training"]["optimizer_steps"] > 0
    splits = {(row["split"], row["round"]) for row in rows}
    assert {("train", 0), ("train", 1), ("val", "base"), ("val", 0), ("val", 1), ("test", "base"), ("test", 1),
            ("test", "template")} <= splits
    prompts = tmp_path / "prompts.jsonl"  # the echo control, scored once, comes back as its own row
    prompts.write_text("".join(json.dumps({"id": f"t{i}", "prompt": p}) + "\n" for i, p in
                               enumerate(("Name a colour.", "Add 2 and 3.", "Say hello."))))
    ok_here("score", "--control", "echo", "--prompts", str(prompts), "--safety", "null", "--model", tiny_model,
            "--dtype", "float32", "--out", str(tmp_path / "echo.jsonl"))
    export_control(tmp_path / "echo.jsonl", tmp_path / "results" / "controls", {"commit": "c0ffee", "cpu": "this CPU"})
    facts_echo, echoed = load_controls(tmp_path / "results" / "controls")["echo"]
    assert facts_echo["commit"] == "c0ffee" and sorted(echoed) == ["t0", "t1", "t2"]
    assert echoed["t1"]["response"].startswith("Summary: Add 2 and 3.")
    write_up.write_report(tmp_path)
    assert "| echo (scored once: c0ffee, this CPU) |" in (tmp_path / "README.md").read_text()
    run = write_up.load(tmp_path / "results")["soft"][0]
    tested = json.loads((out / "round_1" / "principles_eval.json").read_text())
    assert run.rate("test", 1) == pytest.approx(tested["quality"]["aligned"]["rate"])
    assert "| soft-seed0 |" in (tmp_path / "README.md").read_text()

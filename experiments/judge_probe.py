"""Can the demo model judge answers? The built judge (soft_lightning/signals/judge.py) with
SmolLM2-135M-Instruct as its model, on the 192 hand-graded answers (experiments/audit/): its
verdict's AUC against the answers both graders call good, and at its default threshold how many
of the answers it credits are good (`score`'s check against labels). Exploratory, run after the
grades were seen; it decides nothing.

    python experiments/judge_probe.py

Measured 2026-12-06 (2 cores, AMD EPYC family 23 model 1 (Zen 1), AVX2, float32, 11.0 CPU-minutes
beside another job): AUC 0.42 on all 192 answers, 0.35 on the 134 to harmless prompts (worse than
chance), 0.59 on the 58 to harmful ones; at the default threshold it credits 47, of which 2 are
good (0.04 [0.01-0.14]), against 21 of the 145 it does not (0.14 [0.10-0.21]). Before the judge was
built, the same questions with "Yes"/"No" and their lower-case and space-led forms summed gave AUC
0.42, 0.35 and 0.60 (2026-12-05, same CPU). A 135M model is no judge: docs/collapse-guard.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
import audit  # noqa: E402
from results import load  # noqa: E402
from write_up import auc  # noqa: E402


def main() -> None:
    from soft_lightning.commands.score import against_labels
    from soft_lightning.models.source import resolve_model
    from soft_lightning.signals import zero_shot
    from soft_lightning.signals.judge import Judge, judged, verdicts

    judge = Judge(model="smollm2-135m-instruct")
    forward = zero_shot.scoring_forward(resolve_model(judge.model), "float32", "cpu", 8)
    runs = load(HERE / "results")
    one, two = ({e["label"]: e for e in audit.graded(HERE / "audit", name)}
                for name in ("grades.jsonl", "grades_second.jsonl"))
    records = [{**audit.answer(runs, entry), "good": entry["reason"] == "good" and two[label]["reason"] == "good"}
               for label, entry in one.items()]
    for record, verdict in zip(records, verdicts(records, judge, forward)):
        record["signals"] = {"judged": judged(verdict, judge)}
        record["verdict"] = verdict
    for name, keep in (("all", lambda h: True), ("harmless prompts", lambda h: not h), ("harmful prompts", bool)):
        kept = [r for r in records if keep(r.get("harmful", False))]
        value, good, n = auc([(r["verdict"], r["good"]) for r in kept])
        print(f"{name}: AUC {value:.2f} ({good} good of {n}); {against_labels(kept, 'judged')}")


if __name__ == "__main__":
    main()

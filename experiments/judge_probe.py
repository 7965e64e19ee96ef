"""Can the demo model judge answers? The built judge (soft_lightning/signals/judge.py) with
SmolLM2-135M-Instruct as its model, on the 192 hand-graded answers (experiments/audit/): its
verdict's AUC against the answers both graders call good, and at its default threshold how many
of the answers it credits are good (`score`'s check against labels). Exploratory, run after the
grades were seen; it decides nothing.

    python experiments/judge_probe.py

Measured before the judge was built (2026-12-05, 2 cores, AMD EPYC Zen 1, float32, the same
questions, "Yes"/"No" and their lower-case and space-led forms summed): AUC 0.42 on all 192
answers, 0.35 on the 134 to harmless prompts (worse than chance), 0.60 on the 58 to harmful ones.
The built judge's figures: docs/collapse-guard.md.
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

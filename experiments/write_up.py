"""experiments/README.md from the grid's round stores: validation accuracy per round per method
with 95% intervals (table and plot), a verdict per claim from paired tests on the same items, and
the best rounds re-scored by lm-evaluation-harness on the whole validation file.

A verdict is `reproduced` only when the difference goes the paper's way and the exact McNemar test
on the same items gives p < 0.05; the same direction with p >= 0.05 is `inside the noise`; the
other direction with p < 0.05 is `not reproduced`. With several seeds the test pools the item
pairs of seed-matched runs (the same items recur across seeds, so the pooled p is optimistic; the
per-seed figures follow it). Runs not finished yet are marked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from soft_lightning import report, stats
from soft_lightning.store import RoundStore

ALPHA = 0.05
ACC = "val/mc_acc"
CLAIMS = [  # (claim, method that should win, method it should beat), on each run's best round
    ("(1) bootstrapping (SOFT, best round) beats a single round of self-alignment", "soft", "single_round"),
    ("(2) random in-context examples beat fixed ones (best rounds)", "soft", "fixed_icl"),
    ("(3) easy-to-hard (SOFT+) beats random order (best rounds)", "soft_plus", "soft"),
]


def curves(out: Path) -> list[dict]:
    """The run's round-table rows (accuracy, its interval, margin, diagnostics), each with its
    per-item validation results for the paired tests and its lm-eval results, if scored."""
    store = RoundStore(out)
    found = report.manifests(store)
    return [{**row, "correct": (found[row["round"]].get("validation") or {}).get("correct") or [],
             "full": _mc1_items(store.lm_eval_path(row["round"]))}
            for row in report.rows(store, found)]


def best(rows: list[dict]) -> dict | None:
    return report.best_row(rows, ACC, "max")


def verdict(pairs: list[tuple[dict | None, dict | None]], claim: str, items: str = "correct",
            missing: str = "runs unfinished") -> str:
    """`a` should beat `b` in every (a, b) pair (one per seed), paired on the same items."""
    pairs = [(a, b) for a, b in pairs if a and b and a[items] and len(a[items]) == len(b[items])]
    if not pairs:
        return f"{claim}: not measured yet ({missing})"
    first = [x for a, _ in pairs for x in a[items]]
    second = [x for _, b in pairs for x in b[items]]
    test = stats.paired(first, second)
    acc_a, acc_b = sum(first) / len(first), sum(second) / len(second)
    diff = acc_a - acc_b
    if diff > 0 and test["p"] < ALPHA:
        word = "reproduced"
    elif diff < 0 and test["p"] < ALPHA:
        word = "not reproduced (the other way, significantly)"
    else:
        word = "inside the noise at this scale"
    seeds = "" if len(pairs) == 1 else f" ({len(pairs)} seeds pooled, {len(first)} item pairs)"
    text = (f"{claim}: **{word}** — {acc_a:.3f} vs {acc_b:.3f} ({diff:+.3f}){seeds}; items only the first gets "
            f"right {test['only_this']}, only the second {test['only_reference']}, McNemar p = {test['p']:.3f}")
    if len(pairs) > 1:
        text += "; per seed: " + ", ".join(
            f"{_acc(a[items]):.3f} vs {_acc(b[items]):.3f} (p = {stats.paired(a[items], b[items])['p']:.2f})"
            for a, b in pairs)
    return text


def collapse_verdict(runs: list[list[dict]]) -> str:
    claim = "(4) SOFT rises for a few rounds, then falls, and validation catches it"
    numbered = [(i, rows) for i, rows in enumerate(runs) if len(rows) >= 3]  # (i: the run's place in --seeds)
    if not numbered:
        return f"{claim}: not measured yet (runs unfinished)"
    runs = [rows for _, rows in numbered]
    shape = "; ".join(f"round {best(rows)['round']} of {len(rows)} in seed run {i}"
                      + (" (inside the run)" if 0 < best(rows)["round"] < len(rows) - 1 else
                         " (its first round: no rise)" if best(rows)["round"] == 0 else " (its last round)")
                      for i, rows in numbered)
    rise = verdict([(best(rows), rows[0]) for rows in runs], "rise (best round vs round 0)")
    fall = verdict([(best(rows), rows[-1]) for rows in runs], "fall (best vs last round)")
    return f"{claim}: the curve peaks at {shape}.\n  - {rise}\n  - {fall}"


def signals(runs: dict[str, list[list[dict]]]) -> list[str]:
    """The continuous signals of every run, first round → last, and its minutes of generation,
    training, validation and diagnostics (start-up and checkpoints not counted)."""
    lines = ["| run | gen/entropy | gen/distinct2 | val/mc_margin | responses dropped (of prompts) | minutes |",
             "|---|---|---|---|---|---|"]
    for name, rows in (x for method_runs in runs.values() for x in method_runs):
        if rows:
            cells = [" → ".join(f"{row[key]:.2f}" if row.get(key) is not None else "–" for row in rows)
                     for key in ("gen/entropy", "gen/distinct2", "val/mc_margin")]
            dropped = " → ".join(f"{row['prompts'] - row['kept']}/{row['prompts']}" for row in rows)
            seconds = sum(row.get(key) or 0 for row in rows
                          for key in ("generation_s", "scoring_s", "diagnostics_s", "train_s"))
            lines.append(f"| {name} | {' | '.join(cells)} | {dropped} | {seconds / 60:.0f} |")
    return lines


def full_set(runs: dict[str, list[tuple[str, list[dict]]]], base: list[bool] | None, held_out_from: int) -> list[str]:
    """The lm-eval section: every scored round on the whole file, and the claims again on the
    items no best round was picked with (index >= held_out_from)."""
    scored = [(name, row) for method_runs in runs.values() for name, rows in method_runs for row in rows
              if row["full"]]
    if not scored:
        return ["Not scored yet: `python experiments/run_grid.py --full-eval` scores the best rounds (and the base "
                "model) with lm-evaluation-harness on the whole validation file."]
    n = len(scored[0][1]["full"])
    lines = [f"lm-evaluation-harness `mc1` (acc, zero-shot `Q:/A:`, bf16 base + adapter) on all {n} items; "
             f"`held out` = items {held_out_from}..{n - 1}, which never took part in picking a best round.", "",
             "| model | acc (all) | 95% CI | acc (held out) | vs base, held out: only model / only base, p |",
             "|---|---|---|---|---|"]
    rows = ([("base model", {"full": base})] if base else []) + [(f"{name} round {row['round']}", row)
                                                                 for name, row in scored]
    for label, row in rows:
        full, held = row["full"], row["full"][held_out_from:]
        low, high = stats.wilson_interval(sum(full), len(full))
        versus = "–"
        if base and row["full"] is not base:
            test = stats.paired(held, base[held_out_from:])
            versus = f"{test['only_this']} / {test['only_reference']}, p = {test['p']:.3f}"
        lines.append(f"| {label} | {_acc(full):.3f} | {low:.3f}–{high:.3f} | {_acc(held):.3f} | {versus} |")
    held = {m: [(_held(best(rows), held_out_from)) for _, rows in method_runs] for m, method_runs in runs.items()}
    lines += ["", "The claims again, on the held-out items (best rounds, lm-eval):", ""]
    lines += ["- " + verdict(list(zip(held.get(a, []), held.get(b, []))), claim, "held",
                             "a best round not scored with lm-eval yet") for claim, a, b in CLAIMS]
    soft = [rows for _, rows in runs.get("soft", []) if rows]
    missing = "its rounds 0 and last not scored with lm-eval: `evaluate --rounds 0,last`"
    rise = verdict([(_held(best(rows), held_out_from), _held(rows[0], held_out_from)) for rows in soft],
                   "rise (best round vs round 0)", "held", missing)
    fall = verdict([(_held(best(rows), held_out_from), _held(rows[-1], held_out_from)) for rows in soft],
                   "fall (best vs last round)", "held", missing)
    lines += [f"- (4) SOFT's curve on the held-out items:\n  - {rise}\n  - {fall}"]
    return lines


def write_report(here: Path, runs: dict[str, list[Path]], val_path: Path, val_items: int) -> None:
    data = {method: [(out.name, curves(out)) for out in outs] for method, outs in runs.items()}
    lines = ["# Experiments: SOFT's claims on SmolLM2-135M-Instruct", "",
             "Written by `python experiments/run_grid.py` from the round stores in `experiments/runs/` "
             "(not in git: every round's adapter, records and manifest are there to re-score).", "",
             f"Validation: the first {val_items} items of `{val_path.name}` in the zero-shot `Q:/A:` format, every "
             "round; accuracy with a 95% Wilson interval. Settings: `experiments/configs/grid.yaml`.", "",
             "| run | round | val/mc_acc | 95% CI | margin | gen/entropy |", "|---|---|---|---|---|---|"]
    for name, rows in (x for method_runs in data.values() for x in method_runs):
        if not rows:
            lines.append(f"| {name} | – | no trained round yet | | | |")
        for row in rows:
            lines.append(f"| {name} | {row['round']} | {_f(row.get(ACC))} | {_f(row.get(ACC + '_low'))}–"
                         f"{_f(row.get(ACC + '_high'))} | {_f(row.get('val/mc_margin'))} | "
                         f"{_f(row.get('gen/entropy'))} |")
    by_seed = {method: [rows for _, rows in method_runs] for method, method_runs in data.items()}
    lines += ["", "![validation accuracy per round](rounds.png)", "", "## What was found", "",
              f"On the {val_items} validation items, best rounds (the round each run would keep):", ""]
    lines += ["- " + verdict([(best(a), best(b)) for a, b in zip(by_seed.get(w, []), by_seed.get(lose, []))], claim)
              for claim, w, lose in CLAIMS]
    lines += ["- " + collapse_verdict(by_seed.get("soft", [])), "", "### The signals beside accuracy", ""]
    lines += signals(data) + ["", "### The whole validation file through lm-evaluation-harness", ""]
    lines += full_set(data, _base_items(runs), val_items) + [""]
    (here / "README.md").write_text("\n".join(lines) + "\n")
    (here / "results.json").write_text(json.dumps(
        {m: [{"run": name, "rounds": [{k: v for k, v in row.items() if k not in ("correct", "full")} for row in rows]}
             for name, rows in method_runs] for m, method_runs in data.items()}, indent=1) + "\n")
    plot(data, here / "rounds.png")


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, rows in (x for method_runs in data.values() for x in method_runs):
        rows = [row for row in rows if row.get(ACC) is not None]
        if not rows:
            continue
        x = [row["round"] for row in rows]
        y = [row[ACC] for row in rows]
        err = [[row[ACC] - row[ACC + "_low"] for row in rows], [row[ACC + "_high"] - row[ACC] for row in rows]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("val/mc_acc (95% CI)")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mc1_items(path: Path) -> list[bool]:
    """A round's per-item lm-eval `mc1` acc (empty if not scored)."""
    result = json.loads(path.read_text()) if path.is_file() else {}
    task = result.get("tasks", {}).get("mc1")
    return [bool(x) for x in task["per_item"]["acc"]] if task and not result["limit"] else []


def _base_items(runs: dict[str, list[Path]]) -> list[bool] | None:
    """The base model's lm-eval results, from whichever run holds them (the same model and file)."""
    for out in (out for outs in runs.values() for out in outs):
        if items := _mc1_items(RoundStore(out).lm_eval_path("base")):
            return items
    return None


def _held(row: dict | None, start: int) -> dict | None:
    return {"held": row["full"][start:]} if row and row["full"] else None


def _acc(items: list) -> float:
    return sum(items) / len(items)


def _f(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

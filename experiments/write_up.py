"""experiments/README.md from the grid's round stores: the premise, few-shot adherence T(r) and
zero-shot adherence S(r) per rule and round, the best rounds (picked on the validation split)
scored on the test split, and a verdict per claim.

The tests were fixed before any run: per claim, each test prompt's all-rules result of arm A's
chosen round minus arm B's, averaged over the seeds (a prompt that recurs in every seed counts
once), a two-sided sign-flip permutation test on those per-prompt differences, a 95% bootstrap
interval of their mean, and Holm's correction over the five claims. Per-seed exact McNemar
p-values are listed beside. `reproduced`: the paper's direction with Holm p < 0.05; the other
direction with Holm p < 0.05: `not reproduced`; otherwise `inside the noise`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from soft_lightning.rounds import table
from soft_lightning.rounds.store import RoundStore
from soft_lightning.signals import stats
from soft_lightning.signals.adherence import RULES

ALPHA = 0.05
CLAIMS = [  # (name, claim, arm A (should win), its round, arm B, its round)
    ("1", "bootstrapping (SOFT) beats a single round of self-alignment", "soft", "best", "single_round", "best"),
    ("2", "random in-context examples beat fixed ones", "soft", "best", "fixed_icl", "best"),
    ("3", "easy-to-hard (SOFT+) beats random order", "soft_plus", "best", "soft", "best"),
    ("4a", "SOFT rises: its best round beats its round 0", "soft", "best", "soft", "0"),
    ("4b", "then collapses: its best round beats its last", "soft", "best", "soft", "last"),
]


def run_rows(out: Path) -> list[dict]:
    """Per trained round: the round table's row, its truncated and dropped counts, and its test
    results (per prompt, all rules) if scored."""
    store = RoundStore(out)
    found = table.manifests(store)
    return [{**row, "truncated": found[row["round"]].get("truncated"), "dropped": found[row["round"]].get("dropped"),
             "test": test_items(store, row["round"])} for row in table.rows(store, found, compare=False)]


def test_items(store: RoundStore, r) -> list[int] | None:
    path = store.principles_eval_path(r)
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return [int(rec["checks"]["all"]) for rec in result["records"]] if result["prompts"].endswith("rules_test.jsonl") \
        else None


def chosen(rows: list[dict], store: RoundStore, which: str) -> dict | None:
    """The row of round `which` (`best`: the run's best round by validation, `last`, or a number)."""
    if not rows:
        return None
    r = {"best": store.best_round(), "last": rows[-1]["round"]}.get(which, None if which in ("best", "last")
                                                                     else int(which))
    return next((row for row in rows if row["round"] == r), None)


def claim_test(a_items: list[list[int]], b_items: list[list[int]]) -> dict:
    """The pre-registered test of one claim over the seeds that have both arms scored."""
    pairs = [(a, b) for a, b in zip(a_items, b_items) if a and b and len(a) == len(b)]
    if not pairs:
        return {}
    n = len(pairs[0][0])
    diffs = [sum(a[i] - b[i] for a, b in pairs) / len(pairs) for i in range(n)]
    return {"seeds": len(pairs), "a": sum(map(sum, (a for a, _ in pairs))) / (n * len(pairs)),
            "b": sum(map(sum, (b for _, b in pairs))) / (n * len(pairs)), "diff": sum(diffs) / n,
            "ci95": stats.bootstrap_interval(diffs), "p": stats.paired_permutation(diffs),
            "per_seed": [stats.paired(a, b) for a, b in pairs]}


def verdicts(data: dict[str, list[tuple[Path, list[dict]]]]) -> list[str]:
    tests = {}
    for name, _, a, ra, b, rb in CLAIMS:
        a_items = [(chosen(rows, RoundStore(out), ra) or {}).get("test") for out, rows in data.get(a, [])]
        b_items = [(chosen(rows, RoundStore(out), rb) or {}).get("test") for out, rows in data.get(b, [])]
        tests[name] = claim_test(a_items, b_items)
    holm = stats.holm({k: t["p"] for k, t in tests.items() if t})
    lines = ["| claim | A | B | test: A | test: B | A − B [95% CI] | p | Holm p "
             "| per-seed McNemar (only A / only B, p) | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, claim, a, ra, b, rb in CLAIMS:
        t = tests[name]
        if not t:
            lines.append(f"| ({name}) {claim} | {a} {ra} | {b} {rb} | – | – | – | – | – | – | not measured yet |")
            continue
        adjusted = holm[name]
        word = ("reproduced" if t["diff"] > 0 and adjusted < ALPHA else
                "not reproduced (the other way)" if t["diff"] < 0 and adjusted < ALPHA else "inside the noise")
        seeds = "; ".join(f"{s['only_this']}/{s['only_reference']}, {s['p']:.2f}" for s in t["per_seed"])
        lines.append(f"| ({name}) {claim} | {a} {ra} | {b} {rb} | {t['a']:.3f} | {t['b']:.3f} | {t['diff']:+.3f} "
                     f"[{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}] | {t['p']:.3f} | {adjusted:.3f} | {seeds} | "
                     f"**{word}** |")
    return lines


def round_tables(data: dict[str, list[tuple[Path, list[dict]]]]) -> list[str]:
    """T(r) and S(r) (validation) per rule, diversity, truncation and drops, per run and round."""
    rule_cols = " | ".join(f"T {r} | S {r}" for r in RULES)
    lines = [f"| run | round | T(r) all | S(r) all [95% CI] | {rule_cols} | distinct-2 | truncated | dropped | best |",
             "|---|---|---|---|" + "---|" * (2 * len(RULES)) + "---|---|---|---|"]
    for out, rows in (x for runs in data.values() for x in runs):
        best = RoundStore(out).best_round()
        if not rows:
            lines.append(f"| {out.name} | – | no trained round yet |" + " |" * (2 * len(RULES) + 5))
        for row in rows:
            per_rule = " | ".join(f"{_f(row.get(f'fewshot/adherence_{r}'))} | {_f(row.get(f'val/adherence_{r}'))}"
                                  for r in RULES)
            dropped = ", ".join(f"{k} {v}" for k, v in (row.get("dropped") or {}).items()) or "0"
            lines.append(f"| {out.name} | {row['round']} | {_f(row.get('fewshot/adherence'))} | "
                         f"{_f(row.get('val/adherence'))} [{_f(row.get('val/adherence_low'))}, "
                         f"{_f(row.get('val/adherence_high'))}] | {per_rule} | {_f(row.get('gen/distinct2'))} | "
                         f"{row.get('truncated')}/{row.get('prompts')} | {dropped} | "
                         f"{'←' if row['round'] == best else ''} |")
    return lines


def test_table(data: dict[str, list[tuple[Path, list[dict]]]], base: list[int] | None) -> list[str]:
    lines = ["| model | round (how chosen) | S test, all rules [95% CI] | vs base: only it / only base, McNemar p |",
             "|---|---|---|---|"]
    if base:
        low, high = stats.wilson_interval(sum(base), len(base))
        lines.append(f"| base model | – | {_acc(base):.3f} [{low:.3f}, {high:.3f}] | – |")
    for out, rows in (x for runs in data.values() for x in runs):
        best = RoundStore(out).best_round()
        for row in rows:
            if row["test"]:
                items = row["test"]
                low, high = stats.wilson_interval(sum(items), len(items))
                why = "best by validation" if row["round"] == best else "for claim 4"
                versus = "–"
                if base:
                    t = stats.paired(items, base)
                    versus = f"{t['only_this']} / {t['only_reference']}, p = {t['p']:.3f}"
                lines.append(f"| {out.name} | {row['round']} ({why}) | {_acc(items):.3f} [{low:.3f}, {high:.3f}] | "
                             f"{versus} |")
    return lines


def truthfulqa_table(runs: dict[str, list[Path]]) -> list[str]:
    stores = [RoundStore(out) for outs in runs.values() for out in outs]
    base = next((items for s in stores if (items := _mc1(s.lm_eval_path("base")))), None)
    lines = ["| model | round | MC1 acc [95% CI] | vs base: only it / only base, McNemar p |", "|---|---|---|---|"]
    entries = ([("base model", "–", base)] if base else []) + [
        (s.root.name, r, items) for s in stores for r in s.finished_rounds() if (items := _mc1(s.lm_eval_path(r)))]
    for name, r, items in entries:
        low, high = stats.wilson_interval(sum(items), len(items))
        versus = "–"
        if base and items is not base:
            t = stats.paired(items, base)
            versus = f"{t['only_this']} / {t['only_reference']}, p = {t['p']:.3f}"
        lines.append(f"| {name} | {r} | {_acc(items):.3f} [{low:.3f}, {high:.3f}] | {versus} |")
    return lines if len(lines) > 2 else ["Not scored (`python experiments/run_grid.py --truthfulqa`, needs "
                                         "../shared/data/truthfulqa_mc.jsonl)."]


def premise_lines(here: Path) -> list[str]:
    path = here / "runs" / "premise.json"
    if not path.is_file():
        return ["Not measured yet (the grid's first step)."]
    p = json.loads(path.read_text())
    rules = ", ".join(f"{r} {p['per_rule']['few_shot'][r]:.2f} vs {p['per_rule']['zero_shot'][r]:.2f}" for r in RULES)
    few, zero = p["few_shot"], p["zero_shot"]
    return [f"The base model, greedy, on the {p['prompts']} held-out prompts (validation + test), paired: few-shot "
            f"(principles + 3 examples, as round 0 generates) keeps all rules in {few['kept']}/{few['n']} = "
            f"{few['rate']:.3f} [{few['ci95'][0]:.3f}, {few['ci95'][1]:.3f}], zero-shot in {zero['kept']}/{zero['n']}"
            f" = {zero['rate']:.3f} [{zero['ci95'][0]:.3f}, {zero['ci95'][1]:.3f}]; difference "
            f"{few['rate'] - zero['rate']:+.3f} [{p['difference_ci95'][0]:+.3f}, {p['difference_ci95'][1]:+.3f}], "
            f"only few-shot {p['only_this']} / only zero-shot {p['only_reference']}, exact McNemar p = {p['p']:.2g}. "
            f"Per rule (few vs zero): {rules}.", "",
            "**There is a few-shot advantage to bootstrap.**" if p["advantage"] else
            "**No few-shot advantage: the grid stops here.**"]


def write_report(here: Path, runs: dict[str, list[Path]], timings: dict[str, float]) -> None:
    data = {m: [(out, run_rows(out)) for out in outs] for m, outs in runs.items()}
    stores = [RoundStore(out) for outs in runs.values() for out in outs]
    base = next((items for s in stores if (items := test_items(s, "base"))), None)
    timings = dict(timings)
    cpu = timings.pop("_cpu", "an unrecorded CPU")
    total = sum(timings.values())
    lines = ["# Experiments: SOFT's claims on SmolLM2-135M-Instruct, on principles a rule can check", "",
             "Written by `python experiments/run_grid.py` (its docstring says what each step does) from the round "
             "stores in `experiments/runs/` (not in git). Settings: `experiments/configs/grid.yaml` over "
             "`configs/demo.yaml`: the bundled `rules` task (a `Summary:` line, 2–4 numbered points, at most 70 "
             "words, refusing harmful requests), `quantization: none`, 4 rounds × 64 prompts (single round: 1 × "
             "256, the same optimizer steps). T(r): the share of round r's own few-shot answers keeping a rule; "
             "S(r): greedy zero-shot answers to the 40 validation prompts (which pick each run's best round). "
             "The claims are tested on the 60 test prompts only.", "",
             "## The premise", ""] + premise_lines(here) + [
             "", "## Rounds: few-shot T(r) and zero-shot S(r) on validation, per rule", ""] + round_tables(data) + [
             "", "![adherence per round](rounds.png)", "", "## The test split", ""] + test_table(data, base) + [
             "", "## Verdicts", "", __doc__.split("\n\n", 1)[1].strip(), ""] + verdicts(data) + [
             "", "## TruthfulQA MC1 (does no harm; never used to pick a round)", ""] + truthfulqa_table(runs) + [
             "", "## Wall time", "",
             f"{total / 60:.0f} minutes in all on 2 cores of {cpu}: "
             + ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in timings.items()) + " (minutes).", ""]
    (here / "README.md").write_text("\n".join(lines) + "\n")
    (here / "results.json").write_text(json.dumps(
        {m: [{"run": out.name, "best_round": RoundStore(out).best_round(), "rounds": rows} for out, rows in method_runs]
         for m, method_runs in data.items()}, indent=1, default=str) + "\n")
    plot(data, here / "rounds.png")


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for (out, rows), colour in zip((x for runs in data.values() for x in runs), plt.cm.tab10.colors):
        rows = [row for row in rows if row.get("val/adherence") is not None]
        if rows:
            x = [row["round"] for row in rows]
            err = [[row["val/adherence"] - row["val/adherence_low"] for row in rows],
                   [row["val/adherence_high"] - row["val/adherence"] for row in rows]]
            axes[0].errorbar(x, [row["val/adherence"] for row in rows], yerr=err, marker="o", capsize=3,
                             color=colour, label=out.name)
            axes[1].plot(x, [row.get("fewshot/adherence") for row in rows], marker="o", color=colour)
    for ax, title in zip(axes, ("zero-shot S(r), validation (95% CI)", "few-shot T(r), the round's own data")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("share keeping all rules")
    if axes[0].lines:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mc1(path: Path) -> list[int] | None:
    result = json.loads(path.read_text()) if path.is_file() else {}
    task = result.get("tasks", {}).get("mc1")
    return [int(x) for x in task["per_item"]["acc"]] if task and not result["limit"] else None


def _acc(items: list) -> float:
    return sum(items) / len(items)


def _f(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

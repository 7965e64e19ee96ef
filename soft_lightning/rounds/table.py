"""The round report, rebuilt from the round store whenever a round is trained: `rounds.csv` (one
row per trained round), `rounds.png`, `best/` (the best round's adapter), and the table printed
at the end of fit. A row is its round's manifest: counts, timings, training and validation
metrics (written when the round was trained) and the generation diagnostics. Each accuracy comes
with its 95% interval, and each round is compared with the best one on the same items (McNemar).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from soft_lightning.rounds.store import RoundStore
from soft_lightning.signals import quality, stats
from soft_lightning.utils.files import write_bytes_atomic

TABLE_COLUMNS = ["round", "prompts_written", "pool_size", "kept", "tokens_generated", "generation_s", "train_s",
                 "train/loss", "val/loss", "val/aligned", "aligned 95% CI", "vs best", "val/relevance", "val/correct",
                 "val/correct_and_rules", "val/refusal_recall", "val/false_refusal", "val/judged", "val/capability",
                 "fewshot/adherence", "val/adherence", "eval/aligned", "eval/judged", "eval/adherence", "val/mc_acc",
                 "mc_acc 95% CI", "val/mc_margin", "lm_eval/mc1/acc", "lm_eval/mc2/mc2", "gen/entropy", "gen/distinct2"]
# The zero-shot signals a paired comparison can take per answer: metric -> the answers it covers
# and what each contributes.
PER_ANSWER = {
    "val/aligned": (lambda rec: True, lambda rec: rec["signals"]["aligned"]),
    "val/relevance": (lambda rec: not rec.get("harmful"), lambda rec: bool(rec["signals"]["relevant"])),
    "val/adherence": (lambda rec: rec.get("set") != "safety" and "checks" in rec, lambda rec: rec["checks"]["all"]),
    "val/judged": (lambda rec: rec["signals"].get("judged") is not None, lambda rec: rec["signals"]["judged"]),
}


def monitor(trainer) -> tuple[str | None, str]:
    """The metric and mode that pick the best round, the run's one definition of it (`best_row`
    applies them; `best/` records the result, which every reader takes): those of the user's
    ModelCheckpoint, else of an early-stopping callback (Lightning's, or PairedEarlyStopping)."""
    others = [c for c in trainer.callbacks if c not in trainer.checkpoint_callbacks]
    for cb in trainer.checkpoint_callbacks + others:
        if isinstance(getattr(cb, "monitor", None), str) and getattr(cb, "mode", None) in ("max", "min"):
            return cb.monitor, cb.mode
    return None, "max"


def training_fields(metrics: dict[str, float], seconds: float | None, steps: int | None = None) -> dict:
    """What a round's manifest records once it is trained (`training`); `steps`: the run's optimizer
    steps so far (they follow the answers the filters keep, so comparisons state them as realised)."""
    return {"train_s": round(seconds, 2) if seconds is not None else None, "optimizer_steps": steps,
            "train/loss": metrics.get("train/loss_epoch"),
            **{k: v for k, v in metrics.items() if k.startswith("val/")}}


def validation_fields(results: list[tuple[int, bool, float]]) -> dict | None:
    """Per multiple-choice item (in file order): right or not, and the margin; what the intervals
    and the paired comparisons are computed from, and what others can re-test."""
    if not results:
        return None
    return {"items": len(results), "correct": [int(right) for _, right, _ in results],
            "margin": [round(margin, 4) for _, _, margin in results]}


def mark_trained(store: RoundStore, r: int, metrics: dict, seconds: float | None,
                 monitor: tuple[str | None, str], mc_results: list[tuple[int, bool, float]] = (),
                 memory: dict | None = None, steps: int | None = None) -> dict[str, float]:
    """Record round r's training (and its per-item validation results, and rank 0's peak memory
    over the round) in its manifest (the round counts as trained from here on) and rebuild the
    report; returns the round's generation diagnostics, for the loggers."""
    metrics = {k: float(v) for k, v in metrics.items() if v.numel() == 1}
    store.update_manifest(r, training=training_fields(metrics, seconds, steps),
                          validation=validation_fields(mc_results), **({"memory": memory} if memory else {}))
    update(store, *monitor)
    return store.read_manifest(r).get("diagnostics", {})


def round_row(r: int, manifest: dict) -> dict:
    timings = manifest.get("timings", {})
    correct = (manifest.get("validation") or {}).get("correct", [])
    synthesis = manifest.get("synthesis")  # (prompt synthesis on)
    low, high = stats.wilson_interval(sum(correct), len(correct)) if correct else (None, None)
    return {
        "round": r,
        "prompts": manifest.get("prompts"),
        **({"prompts_written": synthesis["kept"], "pool_size": synthesis["pool_size"],
            "synthesis_s": synthesis["seconds"]} if synthesis else {}),
        "kept": manifest.get("kept"),
        "tokens_generated": manifest.get("tokens_generated"),
        "generation_s": timings.get("generation_seconds"),
        "scoring_s": timings.get("scoring_seconds"),
        "diagnostics_s": timings.get("diagnostics_seconds"),
        **manifest.get("training", {}),
        "val/mc_acc_low": low,
        "val/mc_acc_high": high,
        **adherence_fields("fewshot/adherence", manifest.get("few_shot_adherence")),
        **manifest.get("diagnostics", {}),
    }


def adherence_fields(prefix: str, rates: dict | None) -> dict:
    """Principle adherence as columns: `<prefix>` (every rule), its interval, one per rule."""
    if not rates:
        return {}
    low, high = rates["all"]["ci95"]
    return {prefix: rates["all"]["rate"], f"{prefix}_low": low, f"{prefix}_high": high,
            **{f"{prefix}_{rule}": r["rate"] for rule, r in rates.items() if rule != "all"}}


def per_item(store: RoundStore, r: int, manifest: dict, metric: str | None) -> list[int] | None:
    """Round r's per-item results behind `metric`, for paired tests: each zero-shot answer's mark
    for the signals in PER_ANSWER (`val/adherence_*` counts as `val/adherence`), else each
    multiple-choice item's."""
    key = "val/adherence" if metric and metric.startswith("val/adherence") else metric
    if key in PER_ANSWER:
        result, (covers, hit) = store.read_zero_shot(r), PER_ANSWER[key]
        return [int(hit(rec)) for rec in result["records"] if covers(rec)] if result else None
    return (manifest.get("validation") or {}).get("correct")


def manifests(store: RoundStore) -> dict[int, dict]:
    """Every trained round's manifest, read once for everything the report derives from them."""
    return {r: store.read_manifest(r) for r in store.finished_rounds()}


def rows(store: RoundStore, found: dict[int, dict] | None = None, compare: bool = True) -> list[dict]:
    """One row per trained round; `compare`: with the paired comparison against the best round."""
    found = manifests(store) if found is None else found
    table_rows = [{**round_row(r, m), **harness_fields(store.lm_eval_path(r)), **zero_shot_fields(store, r)}
             for r, m in found.items()]
    if compare:
        compare_with_best(store, found, table_rows, store.best_round(), best_monitor(store))
    return table_rows


def zero_shot_fields(store: RoundStore, r: int | str) -> dict:
    """Round r's zero-shot signals beyond the logged rates: the intervals of aligned and of the
    rules, the per-rule rates, `val/decline` (the aligned share of a constant decline on the same
    prompts); and `eval/*` from `evaluate --tasks principles`."""
    result = store.read_zero_shot(r) or {}
    fields = adherence_fields("val/adherence", result.get("adherence"))
    aligned = result.get("quality", {}).get("aligned")
    if aligned and aligned["n"]:
        fields.update({"val/aligned_low": aligned["ci95"][0], "val/aligned_high": aligned["ci95"][1]})
        if harmful := quality.decline_floor(result):
            fields["val/decline"] = harmful / aligned["n"]
    fields.pop("val/adherence", None)
    path = store.principles_eval_path(r)
    evaluated = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    evaluated_rates = {f"eval/{name}": q["rate"] for name, q in evaluated.get("quality", {}).items()}
    return {**fields, **adherence_fields("eval/adherence", evaluated.get("adherence")), **evaluated_rates}


def best_monitor(store: RoundStore) -> str | None:
    path = store.root / "best" / "best.json"
    return json.loads(path.read_text(encoding="utf-8")).get("monitor") if path.is_file() else None


def harness_fields(path: Path) -> dict:
    """`lm_eval/<task>/<metric>` of a round's `python -m soft_lightning evaluate` results, if any."""
    if not path.is_file():
        return {}
    tasks = json.loads(path.read_text(encoding="utf-8"))["tasks"]
    return {f"lm_eval/{task}/{metric}": value for task, result in tasks.items() for metric, value in result.items()
            if isinstance(value, float)}


def best_row(rows: list[dict], metric: str | None, mode: str) -> dict | None:
    """The row with the best `metric` (ties keep the earlier round)."""
    scored = [row for row in rows if metric and row.get(metric) is not None]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda row: (sign * row[metric], -row["round"]))


def update(store: RoundStore, metric: str | None, mode: str) -> tuple[list[dict], int | None]:
    """Rewrite rounds.csv, rounds.png and (when it changed) best/ from the store; returns the
    rows and the best round."""
    found = manifests(store)
    table_rows = rows(store, found, compare=False)
    best = best_row(table_rows, metric, mode)
    if best is not None and store.best_round() != best["round"]:
        store.save_best(best["round"], {
            "round": best["round"], "monitor": metric, "mode": mode, "value": best[metric],
            "history": [(row["round"], row.get(metric)) for row in table_rows],
            "why": f"{'highest' if mode == 'max' else 'lowest'} {metric} over rounds 0..{table_rows[-1]['round']}",
        })
    best_round = best["round"] if best else None
    compare_with_best(store, found, table_rows, best_round, metric)
    write_csv(table_rows, store.root / "rounds.csv")
    write_plot(table_rows, store.root / "rounds.png", metric, best_round)
    return table_rows, best_round


def compare_with_best(store: RoundStore, found: dict[int, dict], rows: list[dict], best_round: int | None,
                      metric: str | None) -> None:
    """Each row's paired comparison with the best round on the same validation items (those of
    the metric that picks it): the items only it gets right, those only the best gets right, and
    the McNemar p-value."""
    correct = {r: per_item(store, r, manifest, metric) for r, manifest in found.items()}
    for row in rows:
        mine, best = correct[row["round"]], correct.get(best_round)
        if mine and best and len(mine) == len(best) and row["round"] != best_round:
            test = stats.paired(mine, best)
            row.update({"vs_best_only_this": test["only_this"], "vs_best_only_best": test["only_reference"],
                        "vs_best_p": test["p"]})


def below_decline(rows: list[dict], r: int | None) -> str | None:
    """A warning where round r's validation answers are aligned no more often than a constant
    decline's would be: by the mark, that round is no better than refusing every prompt (which
    round is best stays the monitor's call, not this check's)."""
    row = next((row for row in rows if row["round"] == r), {})
    aligned, floor = row.get("val/aligned"), row.get("val/decline")
    if aligned is None or floor is None or aligned > floor + 1e-6:  # (val/aligned was logged as float32)
        return None
    return (f"round {r} is aligned on {aligned:.3f} of its validation answers, no more than a constant decline "
            f"({floor:.3f}: refusing every prompt is aligned on the harmful ones); by the mark it is no better than "
            "a model that refuses everything: read its answers (`report`) before using it")


def write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def write_plot(rows: list[dict], path: Path, metric: str | None, best_round: int | None) -> None:
    """Validation metric, entropy and diversity per round; the best round marked, and aligned's
    floor (a constant decline's share). Skipped where matplotlib is not installed (a bare GPU
    image): rounds.csv holds the same numbers."""
    try:
        import matplotlib
    except ImportError:
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(m for m in (metric, "val/aligned", "val/adherence", "val/mc_acc", "gen/entropy")
                                if m and any(row.get(m) is not None for row in rows)))
    panels = panels or ["gen/entropy"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    rounds = [row["round"] for row in rows]
    for ax, name in zip(axes[0], panels):
        ax.plot(rounds, [row.get(name) if row.get(name) is not None else float("nan") for row in rows], marker="o")
        floor = rows[-1].get("val/decline") if name == "val/aligned" else None
        if floor is not None:
            ax.axhline(floor, color="tab:red", linestyle=":", label="a constant decline")
        if best_round is not None:
            ax.axvline(best_round, color="tab:green", linestyle="--", label=f"best: round {best_round}")
        if floor is not None or best_round is not None:
            ax.legend(loc="best", fontsize=8)
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def readable(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """The round table as people read it (printed, in report.html, in an export's model card): the
    columns that have a value, and the rows with the interval and the paired comparison readable."""
    rows = [{**row, **_readable(row)} for row in rows]
    return [c for c in TABLE_COLUMNS if any(row.get(c) is not None for row in rows)], rows


def format_table(rows: list[dict], best_round: int | None) -> str:
    columns, rows = readable(rows)
    lines = ["  ".join(f"{c:>15}" for c in columns)]
    for row in rows:
        mark = "  <- best" if row["round"] == best_round else ""
        lines.append("  ".join(f"{cell(row.get(c)):>15}" for c in columns) + mark)
    return "\n".join(lines)


def _readable(row: dict) -> dict:
    """The interval as `low-high`; the comparison with the best round as `+only this/-only best p=`."""
    out = {}
    if row.get("val/mc_acc_low") is not None:
        out["mc_acc 95% CI"] = f"{row['val/mc_acc_low']:.3f}-{row['val/mc_acc_high']:.3f}"
    if row.get("val/aligned_low") is not None:
        out["aligned 95% CI"] = f"{row['val/aligned_low']:.3f}-{row['val/aligned_high']:.3f}"
    if row.get("val/adherence_low") is not None:
        out["adherence 95% CI"] = f"{row['val/adherence_low']:.3f}-{row['val/adherence_high']:.3f}"
    if row.get("vs_best_p") is not None:
        out["vs best"] = f"+{row['vs_best_only_this']}/-{row['vs_best_only_best']} p={row['vs_best_p']:.2f}"
    return out


def cell(value) -> str:
    """One value of the round table as text."""
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)

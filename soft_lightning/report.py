"""The round report: `rounds.csv` (one row per finished round), `rounds.png`, and the table
printed at the end of fit. Pure functions over the rows the BootstrapCallback collects."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from soft_lightning.jsonl import write_bytes_atomic

TABLE_COLUMNS = ["round", "kept", "tokens_generated", "generation_s", "scoring_s", "train_s", "train/loss",
                 "val/loss", "val/mc_acc", "val/mc_acc_norm", "gen/entropy", "gen/distinct2"]


def write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def write_plot(rows: list[dict], path: Path, monitor: str | None, best_round: int | None) -> None:
    """Validation metric, entropy and diversity per round; the best round marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [m for m in (monitor, "val/mc_acc", "gen/entropy", "gen/distinct2") if m]
    panels = list(dict.fromkeys(panels))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    rounds = [row["round"] for row in rows]
    for ax, metric in zip(axes, panels):
        values = [row.get(metric) for row in rows]
        ax.plot(rounds, [v if v is not None else float("nan") for v in values], marker="o")
        if best_round is not None:
            ax.axvline(best_round, color="tab:green", linestyle="--", label=f"best: round {best_round}")
            ax.legend(loc="best", fontsize=8)
        ax.set_title(metric)
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def format_table(rows: list[dict], best_round: int | None) -> str:
    columns = [c for c in TABLE_COLUMNS if any(row.get(c) is not None for row in rows)]
    lines = ["  ".join(f"{c:>15}" for c in columns)]
    for row in rows:
        mark = "  <- best" if row["round"] == best_round else ""
        lines.append("  ".join(f"{_fmt(row.get(c)):>15}" for c in columns) + mark)
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)

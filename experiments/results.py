"""What the grid keeps in git: per run, every answer with every signal, and the run's facts.

A run's round store (experiments/runs/<arm>-seed<k>/, adapters included) stays on the machine that
made it; `export_run` writes what the write-up needs into experiments/results/<arm>-seed<k>/:

- `answers.jsonl.gz`: one row per answer, `{split, round, ...record}`: `train` (each round's
  self-generated training answers, kept or not), `val` (the zero-shot validation answers that pick
  the round; round `base` = the base model), `test` (every round's zero-shot test answers, the
  base model's in the runs that scored it, and the `template` control's);
- `run.json`: arm, seed, the commit and CPU it ran on, wall seconds, the run's settings (its plan's
  identity), each round's manifest, and TruthfulQA MC1 per item (ids and scores, not the items).

The `echo` control's test answers depend on the prompts alone, so they are scored once
(`export_control`, into experiments/results/controls/) rather than in every run.

Gzip with a fixed timestamp: the same answers give the same bytes, so a re-export changes nothing
in git. `load_run` reads one back, `load` every run as a `Run`; the write-up reads nothing else.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from soft_lightning.rounds.store import RoundStore
from soft_lightning.utils.files import write_bytes_atomic, write_json_atomic


def _rows(split: str, round_: int | str, records: list[dict]) -> list[dict]:
    return [{"split": split, "round": round_, **rec} for rec in records]


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def export_run(out: Path, target: Path, *, arm: str, seed: int, commit: str, cpu: str, seconds: dict) -> dict:
    """Write `target`/answers.jsonl.gz and run.json from the finished run in `out`; returns run.json."""
    store = RoundStore(out)
    rounds = store.finished_rounds()
    rows: list[dict] = []
    for name in ["base", *rounds]:
        if (val := store.read_zero_shot(name)) is not None:
            rows += _rows("val", name, val["records"])
        if (test := _json(store.principles_eval_path(name))) is not None:
            rows += _rows("test", name, test["records"])
        if name != "base":
            rows += _rows("train", name, store.read_records(name))
    if (template := _json(out / "template_principles_eval.json")) is not None:
        rows += _rows("test", "template", template["records"])
    target.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target / "answers.jsonl.gz", _gzip_rows(rows))
    truthfulqa = {}
    for name in ["base", *rounds]:
        if (lm := _json(store.lm_eval_path(name))) is not None and "mc1" in lm["tasks"]:
            truthfulqa[str(name)] = {"data_sha256": lm["data_sha256"], "acc": lm["tasks"]["mc1"]["per_item"]["acc"]}
    facts = {"arm": arm, "seed": seed, "commit": commit, "cpu": cpu, "seconds": seconds,
             "settings": store.read_plan().identity["settings"],
             "manifests": {str(r): store.read_manifest(r) for r in rounds}, "truthfulqa_mc1": truthfulqa}
    write_json_atomic(target / "run.json", facts)
    return facts


def _gzip_rows(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as fh:
        fh.write("".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode())
    return buffer.getvalue()


def export_control(scored: Path, target: Path, facts: dict) -> None:
    """A control's scored test answers (`score --control <name> --out <scored>`) into
    `target`/<name>.jsonl.gz, and the facts of the scoring (commit, CPU, seconds) into <name>.json."""
    records = [json.loads(line) for line in scored.read_text(encoding="utf-8").splitlines() if line.strip()]
    target.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target / f"{scored.stem}.jsonl.gz", _gzip_rows(_rows("test", scored.stem, records)))
    write_json_atomic(target / f"{scored.stem}.json", facts)


def load_controls(folder: Path) -> dict[str, tuple[dict, dict]]:
    """Each control scored once under `folder`: name -> (its facts, its test answers by id)."""
    found = {}
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        name = path.name.removesuffix(".jsonl.gz")
        found[name] = (json.loads((folder / f"{name}.json").read_text(encoding="utf-8")), {r["id"]: r for r in rows})
    return found


def load_run(folder: Path) -> tuple[dict, list[dict]]:
    """(run.json, the answer rows) of one exported run."""
    with gzip.open(folder / "answers.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    return json.loads((folder / "run.json").read_text(encoding="utf-8")), rows


def pick(rates: dict) -> int:
    """The round validation picks (PREREGISTRATION.md): the highest aligned share, ties going to
    the later round."""
    return max(rates, key=lambda r: (rates[r], int(r)))


@dataclass
class Run:
    """One exported run: its facts, aligned marks per split and round, and every answer."""

    arm: str
    seed: int
    facts: dict = field(repr=False)
    val: dict = field(repr=False)  # round -> {id: aligned 0/1}
    test: dict = field(repr=False)  # round -> {id: aligned 0/1}
    answers: dict = field(repr=False)  # (split, round) -> {id: record}

    @property
    def rounds(self) -> list[int]:
        """The trained rounds, in order (the manifests' keys are strings in JSON)."""
        return sorted(int(r) for r in self.facts["manifests"])

    def rate(self, split: str, r) -> float | None:
        marks = (self.val if split == "val" else self.test).get(r)
        return sum(marks.values()) / len(marks) if marks else None

    @property
    def picked(self) -> int:
        """The round validation picks; every claim compares arms there."""
        return pick({r: self.rate("val", r) for r in self.rounds})

    @property
    def truthfulqa(self) -> list | None:
        """TruthfulQA MC1 per item of the picked round (None: not scored)."""
        return self.facts["truthfulqa_mc1"].get(str(self.picked), {}).get("acc")

    @property
    def cpu_kind(self) -> str:
        """torch's CPU kernels the run had (AVX512: bf16 compute, AVX2: float32), from run.json's `cpu`."""
        return self.facts["cpu"].rpartition("torch's ")[2].split(" ")[0]

    @property
    def last(self) -> int:
        """The last round: where a collapse, if any, shows most."""
        return self.rounds[-1]

    def steps_at(self, r: int) -> int | None:
        """Optimizer steps the run had realised by the end of round `r` (its manifest's count, which
        adds up over rounds): what the model a claim compares at a pick was trained with."""
        return self.facts["manifests"][str(r)].get("training", {}).get("optimizer_steps")

    @property
    def steps(self) -> int | None:
        """Optimizer steps of the whole run (the last manifest's count)."""
        return self.steps_at(self.last)


def load(results: Path) -> dict[str, dict[int, Run]]:
    """Every exported run under `results` as arm -> seed -> Run: all the write-up and the hand
    grade read, so a fresh clone rebuilds them."""
    runs: dict[str, dict[int, Run]] = {}
    for folder in sorted(p for p in results.glob("*-seed*") if (p / "run.json").is_file()):
        facts, rows = load_run(folder)
        marks: dict[str, dict] = {"val": {}, "test": {}}
        answers: dict = {}
        for row in rows:
            r = row["round"]
            answers.setdefault((row["split"], r), {})[row["id"]] = row
            if row["split"] in marks:
                marks[row["split"]].setdefault(r, {})[row["id"]] = int(bool(row["signals"]["aligned"]))
        runs.setdefault(facts["arm"], {})[facts["seed"]] = Run(facts["arm"], facts["seed"], facts, marks["val"],
                                                               marks["test"], answers)
    return runs


def base_answers(runs: dict[str, dict[int, Run]]) -> dict | None:
    """The base model's test answers by id, from whichever run scored them (greedy: scored once)."""
    return next((r.answers[("test", "base")] for arm in runs.values() for r in arm.values()
                 if ("test", "base") in r.answers), None)

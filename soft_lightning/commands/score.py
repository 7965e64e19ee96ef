"""`python -m soft_lightning score ANSWERS.jsonl`: every quality signal of any answers, from any
system, without a trained run: rules, relevance (under the base model), correctness, refusals and
the `aligned` mark (signals/quality.py). The controls a claim must beat are scored the same way:
`--control template` (one constant answer that keeps every rule), `--control echo` (the prompt,
formatted as an answer), `--control refusal` (one constant decline) and `--moved true` (each answer moved
to another prompt). The mark credits a refusal of a harmful prompt and nothing else, so the constant
decline scores exactly the harmful prompts' share: the floor a trivial answer reaches, not 0.

Rows with your own hand label `good` (true/false) are also checked against the mark, and against
the judge's verdict where `--judge.model` names one (signals/judge.py): how many of the answers it
credits are good, and how many good ones it credits. The mark can credit fluent nonsense on open
prompts (docs/collapse-guard.md); a few dozen labels say how far it, or a judge, holds on your task.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

from soft_lightning.models.likelihood import Forward
from soft_lightning.models.precision import ComputeDtype, command_numerics
from soft_lightning.models.source import resolve_model
from soft_lightning.rounds.icl import Principles
from soft_lightning.signals import zero_shot
from soft_lightning.signals.judge import Judge
from soft_lightning.signals.relevance import Relevance
from soft_lightning.signals.stats import wilson_interval
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.files import read_records, write_bytes_atomic

TEMPLATE = "Summary: Here is my answer.\n1. Yes.\n2. No."
REFUSAL = "Summary: I can't help with that request.\n1. I won't give steps or details for it.\n2. Ask me another."
CONTROLS = {"template": lambda prompt: TEMPLATE,
            "echo": lambda prompt: f"Summary: {' '.join(prompt.split())}\n1. Yes.\n2. No.",
            "refusal": lambda prompt: REFUSAL}


def control_answers(kind: str, prompts: list[dict]) -> list[dict]:
    """The control's answer to each prompt (kept with the prompt's labels and reference)."""
    return [{**p, "response": CONTROLS[kind](p["prompt"]), "finish_reason": "stop"} for p in prompts]


def moved(records: list[dict], seed: int = 0) -> list[dict]:
    """Every answer moved to another prompt (a seeded rotation: none stays with its own)."""
    shift = random.Random(seed).randrange(1, len(records)) if len(records) > 1 else 0
    return [{**rec, "response": records[(i + shift) % len(records)]["response"],
             "finish_reason": records[(i + shift) % len(records)].get("finish_reason", "stop")}
            for i, rec in enumerate(records)]


def read_answers(path: str) -> list[dict]:
    """{prompt, response, harmful?, reference?, reference_answer?, finish_reason?, good?} rows, checked."""
    key = "score ANSWERS"
    rows = read_records(path, key=key, required={"prompt": str, "response": str})
    for row in rows:
        for flag in ("harmful", "good"):  # (good: your hand label)
            if not isinstance(row.get(flag, False), bool):
                raise ConfigError(f"{key}: {path} line {row['_line']}: field '{flag}' must be true or false.")
        if "reference" in row and not (isinstance(row["reference"], dict) and "type" in row["reference"]):
            raise ConfigError(f"{key}: {path} line {row['_line']}: field 'reference' must be an object with a 'type'.")
    return [{k: v for k, v in row.items() if k != "_line"} for row in rows]


def score_records(records: list[dict], *, checks, relevance: Relevance, base: Forward, judge: Judge | None = None,
                  judge_forward: Forward | None = None) -> dict:
    """Every signal of `records` (marked in place), scored with `base` (the base model) and, where
    `judge` names one, judged (by `judge_forward`, default `base`)."""
    settings = zero_shot.ZeroShot(relevance=relevance, judge=judge or Judge())
    result = zero_shot.score(records, settings, checks, base, judge_forward)
    result.pop("capability", None)  # (a property of a trained policy against its base: none here)
    return result


def against_labels(records: list[dict], signal: str = "aligned") -> str | None:
    """A signal (the aligned mark, or `judged`) against the records' hand labels (`good`), where
    any have one: precision (good among the credited), recall (credited among the good) and good
    among the rest, each k/n with its Wilson interval; None without labels."""
    labelled = [r for r in records if "good" in r and r["signals"].get(signal) is not None]
    if not labelled:
        return None

    def share(hits: list[bool]) -> str:
        if not hits:
            return "0/0"
        low, high = wilson_interval(sum(hits), len(hits))
        return f"{sum(hits)}/{len(hits)} [{low:.2f}-{high:.2f}]"

    credited = [r["good"] for r in labelled if r["signals"][signal]]
    rest = [r["good"] for r in labelled if not r["signals"][signal]]
    good = [r["signals"][signal] for r in labelled if r["good"]]
    return (f"{signal} against your {len(labelled)} labels: good among the credited {share(credited)}, "
            f"credited among the good {share(good)}, good among the rest {share(rest)}")


def score(answers: str | None = None, control: Literal["template", "echo", "refusal"] | None = None,
          prompts: str = "rules-test", safety: str | None = "rules-safety-test", moved_answers: bool = False,
          model: str = "smollm2-135m-instruct", principles: str | None = "rules", relevance: Relevance = Relevance(),
          judge: Judge = Judge(), dtype: ComputeDtype = "auto", device: str = "auto", batch_size: int = 8,
          out: str | None = None) -> None:
    """Score answers with every signal and print one row (the rates, with intervals).

    Args:
        answers: JSONL of {prompt, response, harmful?, reference?, finish_reason?, good?} (e.g.
            another system's outputs, or a round's zero-shot records; `good`: your hand label, which
            the mark is checked against); omit it with `--control`.
        control: score a control instead: `template` (one constant answer that keeps every rule),
            `echo` (each prompt repeated as a formatted answer) or `refusal` (one constant decline),
            on `prompts` and `safety`.
        prompts: the held-out prompts a control answers (as `bootstrap.zero_shot.prompts`).
        safety: the safety prompts a control answers (as `bootstrap.zero_shot.safety`; null: none).
        moved_answers: move every answer to another prompt first (a control: relevance must fall).
        model: the base model relevance is scored with (its calibration is the threshold's).
        principles: the principle set whose rule checks count (null: none).
        relevance: how relevance is scored (signals/relevance.py).
        judge: a language model's verdict on every answer (signals/judge.py; `base`: `model`).
        dtype: the scoring model's dtype; `auto` as a run on `device` picks it.
        device: `auto` (the GPU where there is one), `cpu`, `cuda`, ...
        batch_size: sequences per forward pass.
        out: where each answer's signals go (JSONL); default: beside ANSWERS as *.scored.jsonl.
    """
    if (answers is None) == (control is None):
        raise ConfigError("score: give either ANSWERS (a JSONL file) or --control template|echo|refusal, "
                          "not both or neither.")
    if answers is not None:
        records, name = read_answers(answers), Path(answers).name
    else:
        held_out = zero_shot.ZeroShot(prompts=prompts, safety=safety).load_prompts(key="score --prompts")
        records, name = control_answers(control, held_out), f"{control} control"
    if moved_answers:
        records, name = moved(records), f"{name}, moved to other prompts"
    checks = Principles.load(principles, key="score --principles").checks if principles else None
    judge.check()
    numerics = command_numerics(dtype, device)
    base = zero_shot.scoring_forward(resolve_model(model), *numerics, batch_size)
    result = score_records(records, checks=checks, relevance=relevance, base=base, judge=judge,
                           judge_forward=zero_shot.judge_forward(judge, base, *numerics))
    target = Path(out) if out else (Path(answers).with_suffix(".scored.jsonl") if answers else None)
    if target is not None:
        write_bytes_atomic(target, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records).encode())
    print(f"[soft] score {name}: {zero_shot.summary(result)}" + (f" -> {target}" if target else ""))
    for signal in ("aligned", "judged"):
        if (labels := against_labels(records, signal)) is not None:
            print(f"[soft] score {name}: {labels}")

"""`python -m soft_lightning report OUT_DIR`: one self-contained HTML file (no server, no CDN) to
look at a run: the round table, the plot, the same held-out prompts answered by the base model
and by every round side by side, and each round's training pairs with their in-context example
ids and drop reasons.

Held-out prompts are pool prompts no round drew (so no round trained on them); every model
answers them plainly (no principles, no examples, greedy), as a user would ask. The answers are
kept in `round_<r>/held_out.json` (`base_held_out.json`) and re-used while prompts and settings
are unchanged, so a report of a longer run only generates for the new rounds.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Literal

from soft_lightning.models.formats import PromptFormat
from soft_lightning.models.precision import ComputeDtype, command_numerics
from soft_lightning.models.source import load_tokenizer, resolve_model
from soft_lightning.rounds import table
from soft_lightning.rounds.plan import RunPlan
from soft_lightning.rounds.pool import PromptPool
from soft_lightning.rounds.store import RoundStore
from soft_lightning.sampler import REPORT, Policy, SamplerSettings, make_sampler
from soft_lightning.signals.zero_shot import plain_requests
from soft_lightning.utils.files import write_json_atomic

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}.best{background:#eef7ee}
.answers td{white-space:pre-wrap;max-width:28em;font-size:13px}.prompt{font-weight:600;background:#fafafa}
.dropped{color:#a33}.written{color:#36a}details{margin:.3em 0}summary{cursor:pointer}code{font-size:12px;color:#555}
.marks{font-size:12px;color:#555;margin-top:.4em;white-space:normal}
.warning{background:#fdf0e6;border-left:4px solid #c60;padding:.4em .8em}
"""


def held_out_prompts(plan: RunPlan, count: int, tokenizer) -> list[dict]:
    """The first `count` prompts of the run's pool order that no planned round holds."""
    planned = {p["id"] for prompts in plan.rounds for p in prompts}
    pool = PromptPool(plan.setting("data.prompts"), plan.setting("bootstrap.seed"))
    limit = plan.setting("data.max_prompt_tokens")

    def too_long(text: str) -> bool:  # as the plan judged its prompts
        return bool(limit) and len(tokenizer(text, add_special_tokens=False).input_ids) > limit

    kept = pool.take(len(planned) + count, too_long)
    return [p for p in kept if p["id"] not in planned][:count]


def generate_answers(store: RoundStore, models: list[int | str], prompts: list[dict], *, source: str, tokenizer,
                     sampler: str, max_new_tokens: int, dtype: str, device: str) -> dict[int | str, list[dict]]:
    """Each model's answers to `prompts` (base = "base"), from the store when already made with
    the same prompts and settings."""
    settings = {"prompts": [p["id"] for p in prompts], "max_new_tokens": max_new_tokens, "decoding": "greedy",
                "dtype": dtype}
    answers, missing = {}, []
    for m in models:
        path = _answers_path(store, m)
        saved = json.loads(path.read_text()) if path.is_file() else {}
        if saved.get("settings") == settings:
            answers[m] = saved["answers"]
        else:
            missing.append(m)
    if missing:
        fmt = PromptFormat(tokenizer)
        requests = plain_requests(prompts, fmt)
        engine = make_sampler(SamplerSettings(backend=sampler, adapter_sync="merged"), Policy(source, dtype, device),
                              sampling=replace(REPORT, max_new_tokens=max_new_tokens), tokenizer=tokenizer,
                              stop=fmt.stop_strings())
        try:
            for m in missing:
                adapter = None if m == "base" else store.adapter_dir(m)
                engine.sync_weights(adapter)
                answers[m] = engine.generate(requests, round_index=0 if m == "base" else m + 1)
                write_json_atomic(_answers_path(store, m), {"settings": settings, "answers": answers[m]})
                print(f"[soft] report: {'base model' if m == 'base' else f'round {m}'} answered {len(requests)} "
                      "held-out prompts")
        finally:
            engine.close()
    return answers


def write_report(store: RoundStore, plan: RunPlan, answers: dict[int | str, list[dict]], prompts: list[dict]) -> Path:
    rows = table.rows(store)
    best = store.best_round()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>SOFT run {html.escape(store.root.name)}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>SOFT run <code>{html.escape(str(store.root))}</code></h1>",
             f"<p>Model <code>{html.escape(plan.setting('model.model_name_or_path'))}</code>; {len(rows)} trained "
             f"round(s); best round: {best if best is not None else '–'}.</p>"]
    if warning := table.below_decline(rows, best):
        parts.append(f"<p class=warning>Warning: the best {html.escape(warning)}.</p>")
    parts += ["<h2>Rounds</h2>", _round_table(rows, best)]
    plot = store.root / "rounds.png"
    if plot.is_file():
        data = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f"<img alt='metrics per round' src='data:image/png;base64,{data}'>")
    parts += ["<h2>The same held-out prompts, answered by each round</h2>",
              "<p>Prompts no round trained on; plain questions (no principles, no examples), greedy decoding. "
              "Round <i>r</i> is the model after round <i>r</i>'s training. Under each answer its marks "
              "(docs/collapse-guard.md): ✓/✗ aligned, rules, relevant, correct (where the prompt has a "
              "reference), refusal and judged (where a judge model is set).</p>", _side_by_side(answers, prompts),
              "<h2>Each round's training pairs</h2>"]
    parts += [_round_data(store, plan, r) for r in (row["round"] for row in rows)]
    parts.append("</body></html>")
    path = store.root / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def build_report(out_dir: str, answers: int = 6, held_out: Literal["zero_shot", "pool"] = "zero_shot",
                 max_new_tokens: int = REPORT.max_new_tokens, sampler: Literal["hf", "vllm"] = "hf",
                 dtype: ComputeDtype = "auto", device: str = "auto") -> None:
    """Write `<out_dir>/report.html`: the round table, plot, held-out answers side by side and
    each round's training pairs.

    Args:
        out_dir: the run's out_dir.
        answers: how many held-out answers per model are shown side by side (0: none).
        held_out: `zero_shot`: the run's own zero-shot answers, with their signals (nothing to
            generate; a run without them falls back to `pool`); `pool`: prompts of the pool no
            round drew, answered now by every model (once per model and setting, kept in the store).
        max_new_tokens: the generated answers' length cap (tokens).
        sampler: where answers are generated: `hf` (the adapter merged into a full-precision copy) or `vllm`.
        dtype: the answering model's dtype (`auto`: as a run on `device` picks it, precision.py).
        device: `auto` (the GPU where there is one), `cpu`, `cuda`, ...
    """
    store, plan = RoundStore.open_run(out_dir, "report")
    models = ["base", *store.finished_rounds()]
    prompts, made = zero_shot_answers(store, models, answers) if held_out == "zero_shot" else ([], {})
    if not prompts and answers:  # a run without zero-shot answers: generate for held-out pool prompts
        source = resolve_model(plan.setting("model.model_name_or_path"))
        dtype, device = command_numerics(dtype, device)
        tokenizer = load_tokenizer(source)
        prompts = held_out_prompts(plan, answers, tokenizer)
        if not prompts:
            print("[soft] report: every prompt of the pool went to a round; no held-out prompts to answer.")
        else:
            made = generate_answers(store, models, prompts, source=source, tokenizer=tokenizer, sampler=sampler,
                                    max_new_tokens=max_new_tokens, dtype=dtype, device=device)
    print(f"[soft] report -> {write_report(store, plan, made, prompts)}")


def zero_shot_answers(store: RoundStore, models: list[int | str], count: int) -> tuple[list[dict], dict]:
    """`count` of the zero-shot answers the run already holds (base and every round, with their
    signals), spread over the held-out and safety prompts; nothing when a model lacks them."""
    results = {m: store.read_zero_shot(m) for m in models}
    if not count or any(result is None for result in results.values()):
        return [], {}
    records = results["base"]["records"]
    picked = sorted({round(i * len(records) / count) for i in range(min(count, len(records)))})
    prompts = [{"id": records[i]["id"], "prompt": records[i]["prompt"]} for i in picked]
    return prompts, {m: [result["records"][i] for i in picked] for m, result in results.items()}


def _answers_path(store: RoundStore, m: int | str) -> Path:
    return store.root / "base_held_out.json" if m == "base" else store.round_dir(m) / "held_out.json"


def _round_table(rows: list[dict], best: int | None) -> str:
    columns, rows = table.readable(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr{' class=best' if row['round'] == best else ''}>" + "".join(
        f"<td class=num>{html.escape(table.cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table id=rounds><tr>{head}</tr>{body}</table>"


def _side_by_side(answers: dict[int | str, list[dict]], prompts: list[dict]) -> str:
    if not answers:
        return "<p>No held-out answers (<code>--answers 0</code>, or no prompt left in the pool).</p>"
    models = list(answers)
    head = "<th>prompt</th>" + "".join(f"<th>{'base' if m == 'base' else f'round {m}'}</th>" for m in models)
    body = []
    for i, prompt in enumerate(prompts):
        cells = "".join(f"<td title='{answers[m][i]['n_tokens']} tokens, {answers[m][i]['finish_reason']}'>"
                        f"{html.escape(answers[m][i]['response'])}{_marks(answers[m][i])}</td>" for m in models)
        body.append(f"<tr class=answers><td class=prompt>{html.escape(prompt['prompt'])}</td>{cells}</tr>")
    return f"<table id=side-by-side><tr>{head}</tr>{''.join(body)}</table>"


def _marks(record: dict) -> str:
    """An answer's signals as ✓/✗ (those that apply to it)."""
    signals = record.get("signals")
    if not signals:
        return ""
    shown = [(name, signals[name]) for name in ("aligned", "rules", "relevant", "correct", "refusal", "judged")
             if signals.get(name) is not None]
    marks = " ".join(f"{'✓' if value else '✗'} {name}" for name, value in shown)
    label = "harmful prompt" if record.get("harmful") else ""
    return f"<div class=marks>{marks}{' · ' + label if label else ''}</div>"


def _round_data(store: RoundStore, plan: RunPlan, r: int) -> str:
    records = store.read_records(r)
    written = {p["id"]: p for p in plan.synthesized_prompts(r)}
    reasons = Counter(rec.get("drop_reason") for rec in records if not rec.get("kept", True))
    summary = f"round {r}: {sum(rec.get('kept', True) for rec in records)} kept of {len(records)}" + (
        f" ({len(written)} prompts written by the model)" if written else "") + (
        " — dropped: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()) if reasons else "")
    items = []
    for rec in records:
        dropped = not rec.get("kept", True)
        tag = f"<span class=dropped>dropped: {html.escape(str(rec.get('drop_reason')))}</span> " if dropped else ""
        if rec["id"] in written:
            tag += f"<span class=written>[written by the model: {html.escape(written[rec['id']]['topic'])}]</span> "
        items.append(f"<details><summary>{tag}{html.escape(rec['prompt'][:120])}</summary>"
                     f"<p><code>examples shown: {html.escape(', '.join(rec.get('icl_ids', [])) or 'none')}</code></p>"
                     f"<pre style='white-space:pre-wrap'>{html.escape(rec['response'])}</pre></details>")
    return f"<details class=round><summary>{html.escape(summary)}</summary>{''.join(items)}</details>"


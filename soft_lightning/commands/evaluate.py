"""`python -m soft_lightning evaluate`: score the base model and a run's round adapters with
lm-evaluation-harness (the `eval` extra), on local multiple-choice files, so the numbers are the
field's own and comparable with other work.

Tasks are defined here, over our `{question, choices, label}` JSONL (no hub download):
- `mc1`: one right choice among `choices`; lm-eval's `acc` and `acc_norm` (by characters).
- `mc2` (rows with TruthfulQA's `mc2_choices` and `mc2_labels`): the probability mass on the true
  answers, normalised over all answers, as TruthfulQA's MC2 defines it.
Both are zero-shot in the `Q: ...\\nA: ...` format (`data.val_format: qa` scores the same way).
Results go to `round_<r>/lm_eval.json` (`base_lm_eval.json` for the base model), with per-item
results for paired tests, and into rounds.csv.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from soft_lightning.models.precision import ComputeDtype, command_numerics
from soft_lightning.models.source import resolve_model
from soft_lightning.rounds import table
from soft_lightning.rounds.store import RoundStore
from soft_lightning.signals.judge import Judge
from soft_lightning.signals.multiple_choice import read_mc
from soft_lightning.signals.stats import wilson_interval
from soft_lightning.utils.assets import bundled
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.files import sha256_file, write_json_atomic


def mc2_result(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """TruthfulQA MC2: the share of probability on the true answers (log-likelihoods of all)."""
    import numpy as np

    lls = np.array([ll for ll, _ in results])
    probs = np.exp(lls - lls.max())
    labels = np.array(doc["mc2_labels"])
    return {"mc2": float(probs[labels == 1].sum() / probs.sum())}


def task_configs(path: str, with_mc2: bool, with_mc1: bool = True) -> list[dict]:
    """lm-eval task configs over a local JSONL file."""
    base = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": path}}, "test_split": "test",
            "output_type": "multiple_choice", "doc_to_text": "Q: {{question}}\nA:", "target_delimiter": " "}
    mean = {"aggregation": "mean", "higher_is_better": True}
    tasks = []
    if with_mc1:
        tasks.append({**base, "task": "mc1", "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
                      "metric_list": [{"metric": "acc", **mean}, {"metric": "acc_norm", **mean}]})
    if with_mc2:
        tasks.append({**base, "task": "mc2", "doc_to_choice": "{{mc2_choices}}", "doc_to_target": 0,
                      "process_results": mc2_result, "metric_list": [{"metric": "mc2", **mean}]})
    return tasks


def has_mc2(rows: list[dict]) -> bool:
    """Whether every row carries TruthfulQA's MC2 fields."""
    return all("mc2_choices" in row and "mc2_labels" in row for row in rows)


def run_harness(model: str, adapter: Path | None, data: str, *, with_mc2: bool, limit: int | None, dtype: str,
                device: str, batch_size: int, with_mc1: bool = True) -> dict:
    """Score one model (+ adapter) on `data` (already checked); per task its metrics, the 95%
    interval of `acc`, and per-item results in file order."""
    from lm_eval import simple_evaluate

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    args = {"pretrained": model, "dtype": dtype, **({"peft": str(adapter)} if adapter else {})}
    out = simple_evaluate(model="hf", model_args=args, tasks=task_configs(data, with_mc2, with_mc1), limit=limit,
                          batch_size=batch_size, device=device, log_samples=True, bootstrap_iters=0)
    tasks = {}
    for name, metrics in out["results"].items():
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        values = {k.split(",")[0]: v for k, v in metrics.items() if k.endswith(",none") and "stderr" not in k}
        per_item = {metric: [s[metric] for s in samples] for metric in values}
        if "acc" in values:
            values["acc_ci95"] = list(wilson_interval(int(sum(per_item["acc"])), len(samples)))
        tasks[name] = {**values, "items": len(samples), "per_item": per_item}
    return {"tasks": tasks, "model": model, "adapter": str(adapter) if adapter else None, "data": data,
            "limit": limit, "dtype": dtype, "format": "qa, zero-shot", "lm_eval": version("lm_eval")}


def evaluate(out_dir: str, rounds: str = "all", data: str = "demo", limit: int | None = None,
             tasks: Literal["both", "mc1", "mc2", "principles"] = "both",
             dtype: ComputeDtype = "auto", device: str = "auto",
             batch_size: int = 8, model: str | None = None, prompts: str = "rules-test",
             safety: str | None = "rules-safety-test", principles: str | None = "rules",
             judge: Judge = Judge()) -> None:
    """Score a run's rounds with lm-evaluation-harness (or their zero-shot principle adherence)
    and add the results to its round table.

    Args:
        out_dir: the run's out_dir (its plan names the model); with `--tasks principles` also an
            exported model folder (`python -m soft_lightning export`).
        rounds: `all` (base and every trained round), or a comma list of round numbers, `base`,
            `best` and `last`, e.g. `base,best,last`.
        data: a multiple-choice JSONL {question, choices, label} (with `mc2_choices`/`mc2_labels`,
            also MC2), e.g. TruthfulQA's; `demo` = the bundled set.
        limit: score only the first `limit` items.
        tasks: `both` (MC2 where the file has its fields), or only `mc1` / `mc2` (TruthfulQA's MC2 has
            ~1.4x as many answers to score as MC1).
        dtype: the unquantised base's dtype (the adapters were trained on the nf4 base: the usual
            QLoRA deployment trade-off); `auto` as a run on `device` picks it (precision.py).
        device: `auto` (the GPU where there is one), `cpu`, `cuda`, `cuda:1`, ...
        batch_size: lm-eval's batch size.
        model: the base model, if not the run's (its plan's `model`).
        prompts: for `--tasks principles`, held-out {prompt, harmful?, reference?} JSONL the model
            answers zero-shot (greedy, in the training chat format, no principles or examples),
            scored by every quality signal; `rules-test` (default) and `rules` (validation) are the
            bundled splits. `limit` applies (taken in turn from each kind of prompt).
        safety: for `--tasks principles`, the safety prompts answered too (`rules-safety-test`,
            the bundled test half; null: none).
        principles: the principle set whose rule checks count (`rules` is bundled; null: none).
        judge: for `--tasks principles`, a language model's verdict on every answer
            (signals/judge.py; `base`: the run's base model).
    """
    if tasks == "principles":
        return evaluate_principles(out_dir, rounds, prompts, safety, principles, limit, dtype, device, model,
                                   batch_size, judge)
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("evaluate needs lm-evaluation-harness: pip install -e '.[eval]'.") from None
    store, plan = RoundStore.open_run(out_dir, "evaluate")
    data = bundled("data.val_path", data)
    with_mc2, sha = has_mc2(read_mc(data, limit)), sha256_file(data)  # the file checked before any model loads
    if tasks == "mc2" and not with_mc2:
        raise ConfigError(f"evaluate --tasks mc2: {data} has rows without mc2_choices/mc2_labels; use --tasks mc1.")
    with_mc1, with_mc2 = tasks != "mc2", with_mc2 and tasks != "mc1"
    chosen = _chosen_rounds(rounds, store)
    source = resolve_model(model or plan.setting("model.model_name_or_path"))
    dtype, device = command_numerics(dtype, device)
    for r in chosen:
        adapter = None if r == "base" else store.adapter_dir(r)
        result = {**run_harness(source, adapter, data, with_mc1=with_mc1, with_mc2=with_mc2, limit=limit,
                                dtype=dtype, device=device, batch_size=batch_size), "data_sha256": sha}
        path = store.lm_eval_path(r)
        write_json_atomic(path, result)
        summary = {f"{t}/{m}": v for t, res in result["tasks"].items() for m, v in res.items()
                   if isinstance(v, float)}
        print(f"[soft] {'base model' if r == 'base' else f'round {r}'}: {json.dumps(summary)} -> {path}")
    refresh_table(store)


def refresh_table(store: RoundStore) -> None:
    """rounds.csv and the plot again, with the new results, by the run's own best-round monitor."""
    best = store.root / "best" / "best.json"
    note = json.loads(best.read_text()) if best.is_file() else {}
    table.update(store, note.get("monitor"), note.get("mode", "max"))


def _chosen_rounds(rounds: str, store: RoundStore) -> list[int | str]:
    """`all`, or a comma list of `base`, `best`, `last` and round numbers (duplicates dropped)."""
    if rounds == "all":
        return ["base", *store.finished_rounds()]
    chosen = ["base" if part == "base" else store.round_named(part, "evaluate --rounds")
              for part in (p.strip() for p in rounds.split(","))]
    return list(dict.fromkeys(chosen))


def evaluate_principles(out_dir: str, rounds: str, prompts: str, safety: str | None, principles: str | None,
                        limit: int | None, dtype: str, device: str, model: str | None, batch_size: int,
                        judge: Judge) -> None:
    """`evaluate --tasks principles`: each chosen round's (or an export's) zero-shot answers on
    `prompts` (and `safety`), with every quality signal and the rules per rule, 95% intervals,
    into `principles_eval.json` and the round table; then the template control on the same prompts."""
    from soft_lightning.commands.score import control_answers, score_records
    from soft_lightning.rounds.icl import Principles
    from soft_lightning.signals import zero_shot

    checks = Principles.load(principles, key="evaluate --principles").checks if principles else None
    settings = zero_shot.ZeroShot(prompts=prompts, limit=limit, safety=safety, judge=judge)
    held_out = settings.load_prompts(key="evaluate --prompts")  # checked before any model loads (the judge too)
    dtype, device = command_numerics(dtype, device)
    folder, store = Path(out_dir), RoundStore(out_dir)
    plan = store.read_plan()
    if plan is None:
        if not (folder / "config.json").is_file():
            raise ConfigError(f"evaluate: {out_dir} is neither a run (no plan.json) nor a model folder (no "
                              "config.json); give a run's out_dir or an export.")
        source, targets = str(folder), [("export", folder / "principles_eval.json", None)]
    else:
        source = resolve_model(model or plan.setting("model.model_name_or_path"))
        targets = [(r, store.principles_eval_path(r), None if r == "base" else store.adapter_dir(r))
                   for r in _chosen_rounds(rounds, store)]
    base = zero_shot.scoring_forward(source, dtype, device, batch_size)
    judged_by = zero_shot.judge_forward(judge, base, dtype, device)
    results = zero_shot.evaluate_models(source, [adapter for *_, adapter in targets], held_out, settings, checks,
                                        base, judged_by, dtype=dtype, device=device)
    for (name, path, _), result in zip(targets, results):
        write_json_atomic(path, result)
        label = {"base": "base model", "export": f"export {out_dir}"}.get(name, f"round {name}")
        print(f"[soft] {label} on {prompts}: {zero_shot.summary(result)} -> {path}")
    answers = control_answers("template", held_out)
    template = {**score_records(answers, checks=checks, relevance=settings.relevance, base=base, judge=judge,
                                judge_forward=judged_by), "records": answers}
    print(f"[soft] template control on {prompts}: {zero_shot.summary(template)}")
    if plan is not None:
        write_json_atomic(store.root / "template_principles_eval.json", template)
        refresh_table(store)

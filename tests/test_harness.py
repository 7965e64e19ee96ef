"""lm-evaluation-harness: our validation scorer agrees with it item by item, and `evaluate`
writes its results into a run's store and round table."""

import csv
import io
import json
import shutil

import lightning as L
import pytest

from soft_lightning.commands.evaluate import has_mc2, run_harness
from soft_lightning.training.data import SoftDataModule
from soft_lightning.training.module import SoftModule
from tests.helpers.cli import TRUTHFULQA, needs_truthfulqa, ok_here, run_here
from tests.test_collapse_guard import small_mc_file

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install -e '.[eval]')")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["bundled", pytest.param("truthfulqa", marks=needs_truthfulqa)])
def test_our_multiple_choice_scorer_agrees_with_lm_eval(source, tiny_model, tmp_path):
    """Same items, same weights (float32; a fresh LoRA leaves the base's outputs), the `qa` format:
    every item picks the same choice, by likelihood and by likelihood per character."""
    path, rows = small_mc_file(tmp_path, source, n=24)
    if source == "bundled":  # plain {question, choices, label} rows: MC1 only
        rows = [{k: row[k] for k in ("question", "choices", "label")} for row in rows]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dm = SoftDataModule(prompts=None, val_path=str(path), val_format="qa", val_batch_items=5, tokenizer=tiny_model)
    module = SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    ours = trainer.validate(module, datamodule=dm, verbose=False)[0]
    theirs = run_harness(tiny_model, None, str(path), with_mc2=has_mc2(rows), limit=None, dtype="float32",
                         device="cpu", batch_size=8)
    mc1 = theirs["tasks"]["mc1"]
    assert [int(right) for _, right, _ in module.mc_results] == [int(x) for x in mc1["per_item"]["acc"]]
    assert ours["val/mc_acc"] == pytest.approx(mc1["acc"], abs=1e-9)
    assert ours["val/mc_acc_norm"] == pytest.approx(mc1["acc_norm"], abs=1e-9)
    assert mc1["items"] == len(rows) and mc1["acc_ci95"][0] <= mc1["acc"] <= mc1["acc_ci95"][1]
    assert ("mc2" in theirs["tasks"]) == (source == "truthfulqa")  # only rows with mc2_choices/mc2_labels
    if source == "truthfulqa":
        assert 0 < theirs["tasks"]["mc2"]["mc2"] < 1


@pytest.mark.slow
def test_evaluate_scores_every_round_into_the_store(trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)  # a copy: the session's run stays as trained
    data = TRUTHFULQA if TRUTHFULQA.is_file() else "demo"
    result = ok_here("evaluate", str(out), "--data", str(data), "--limit", "6", "--rounds", "base,last,best")
    base, round_0 = json.loads((out / "base_lm_eval.json").read_text()), json.loads(
        (out / "round_0" / "lm_eval.json").read_text())
    assert base["adapter"] is None and round_0["adapter"].endswith("round_0/adapter")
    assert round_0["tasks"]["mc1"]["items"] == 6 and len(round_0["tasks"]["mc1"]["per_item"]["acc"]) == 6
    assert "round 0:" in result.stdout and "base model:" in result.stdout
    table = list(csv.DictReader(io.StringIO((out / "rounds.csv").read_text())))
    assert float(table[0]["lm_eval/mc1/acc"]) == round_0["tasks"]["mc1"]["acc"]

    refused = run_here("evaluate", str(out), "--rounds", "0,7")
    assert refused.returncode == 2 and "'7' is neither `best`, `last` nor a trained round ([0])" in (
        refused.stderr)
    plain = tmp_path / "mc1_only.jsonl"
    plain.write_text(json.dumps({"question": "2 + 2?", "choices": ["4", "5"], "label": 0}) + "\n")
    refused = run_here("evaluate", str(out), "--tasks", "mc2", "--data", str(plain))
    assert refused.returncode == 2 and "has rows without mc2_choices/mc2_labels; use --tasks mc1" in refused.stderr
    refused = run_here("evaluate", str(tmp_path))
    assert refused.returncode == 2 and "holds no plan.json" in refused.stderr

"""Collapse guard: the MC evaluator against a per-item reference (on the bundled set, and on
TruthfulQA when the shared file is there), early stop + best round on a real Trainer, the round
report, and the diagnostics against hand-computed values."""

import csv
import filecmp
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from soft_lightning.callbacks.bootstrap import BootstrapCallback
from soft_lightning.callbacks.paired_early_stopping import PairedEarlyStopping
from soft_lightning.models.encoding import Encoder, TrainExample
from soft_lightning.models.likelihood import (
    choice_logprobs,
    header_length,
    labelled_logits,
    labelled_logprobs,
    token_entropy,
)
from soft_lightning.rounds.filters import FilterSettings
from soft_lightning.rounds.icl import IclSettings
from soft_lightning.sampler import SamplerSettings, SamplingSettings
from soft_lightning.signals import stats
from soft_lightning.signals.diagnostics import distinct_n
from soft_lightning.signals.multiple_choice import collate_mc, mc_pair
from soft_lightning.training.data import SoftDataModule
from soft_lightning.training.module import SoftModule
from soft_lightning.utils.assets import asset_path
from soft_lightning.utils.errors import ConfigError
from tests.helpers.cli import ROOT, TRUTHFULQA, needs_truthfulqa, run_cli

MC_FILES = {"bundled": asset_path("demo_mc.jsonl"), "truthfulqa": TRUTHFULQA}


def small_mc_file(tmp_path, source="bundled", n=24):
    rows = [json.loads(line) for line in MC_FILES[source].read_text().splitlines()[:n]]
    path = tmp_path / f"{source}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def reference_accuracy(model, tokenizer, rows, pair) -> tuple[float, float]:
    """One forward pass per choice, no batching, no padding: the straightforward computation."""
    acc = acc_norm = 0
    for row in rows:
        scores, norms = [], []
        for choice in row["choices"]:
            context, target = pair(row["question"], choice)
            ctx = tokenizer(context, add_special_tokens=False).input_ids
            tgt = tokenizer(target, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + tgt])).logits[0].float(), -1)
            total = sum(logp[len(ctx) + j - 1, t].item() for j, t in enumerate(tgt))
            scores.append(total)
            norms.append(total / len(choice))
        acc += max(range(len(scores)), key=scores.__getitem__) == row["label"]
        acc_norm += max(range(len(norms)), key=norms.__getitem__) == row["label"]
    return acc / len(rows), acc_norm / len(rows)


@pytest.mark.parametrize("source", ["bundled", pytest.param("truthfulqa", marks=needs_truthfulqa)])
@pytest.mark.parametrize("val_format", ["chat", "qa"])
def test_mc_accuracy_equals_a_per_item_reference(val_format, source, tiny_model, tmp_path):
    path, rows = small_mc_file(tmp_path, source)
    dm = SoftDataModule(prompts=None, val_path=str(path), val_format=val_format, val_batch_items=5,
                        tokenizer=tiny_model)
    module = SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    acc, acc_norm = reference_accuracy(module.model, dm.encoder.tokenizer, rows,
                                       lambda q, c: mc_pair(dm.encoder, q, c, val_format))
    assert metrics["val/mc_acc"] == pytest.approx(acc, abs=1e-7)
    assert metrics["val/mc_acc_norm"] == pytest.approx(acc_norm, abs=1e-7)


def test_mc_accuracy_is_an_exact_fraction_under_bf16(tiny_model, tmp_path):
    """bf16-true casts metric states with the module; accuracy must still be k/n exactly."""
    path, rows = small_mc_file(tmp_path, n=24)  # (bundled)
    dm = SoftDataModule(prompts=None, val_path=str(path), val_batch_items=5, tokenizer=tiny_model)
    module = SoftModule(tiny_model, lora_r=8)  # nf4 base, bf16 compute, like the demo
    trainer = L.Trainer(accelerator="cpu", precision="bf16-true", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    for name in ("val/mc_acc", "val/mc_acc_norm"):
        k = metrics[name] * len(rows)
        assert abs(k - round(k)) < 1e-6, f"{name}={metrics[name]!r} is not a count out of {len(rows)}"


def test_qa_format_reproduces_the_harness_prompt():
    assert mc_pair(None, "What colour is the sky?", "Blue.", "qa") == ("Q: What colour is the sky?\nA:", " Blue.")


def test_distinct_n_by_hand():
    texts = ["a b a b", "A c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)  # a b c out of a b a b a c
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (a b) (b a) (a b) (a c)
    assert distinct_n(["one"], 2) == 0.0


def test_token_entropy_by_hand():
    probs = torch.tensor([0.5, 0.25, 0.25])
    logits = torch.log(probs).expand(1, 3, 3).clone()

    def fixed_distribution(input_ids, attention_mask):
        return SimpleNamespace(logits=logits)

    labels = torch.tensor([[-100, 1, 2]])  # positions 1 and 2 are predicted from 0 and 1
    total, count = token_entropy(fixed_distribution, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), labels)
    expected = -(probs * probs.log()).sum().item()  # 1.0397 nats
    assert count.item() == 2 and total.item() == pytest.approx(2 * expected, rel=1e-6)
    assert expected == pytest.approx(1.5 * math.log(2), rel=1e-6)


def test_a_batch_s_shared_header_runs_once_and_changes_no_logit(tiny_model):
    """Scoring runs the chat header that every row of a batch shares once (`share_header`): the
    logits of whole rows, to float rounding. A batch with a row that shares no header is run whole."""
    from transformers import AutoModelForCausalLM

    encoder = Encoder.load(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    chat = [encoder.encode_pair("", prompt, answer) for prompt, answer in
            (("Name a colour.", "Red."), ("What is two plus two? Answer briefly.", "Four, I think."))]
    bare = TrainExample("", chat[0].input_ids[5:], chat[0].labels[5:])
    for rows, shared in ((chat, True), (chat + [bare], False)):
        batch = encoder.collate(rows)
        header = header_length(batch["input_ids"], batch["labels"][:, 1:] != -100)
        assert (header > 10) == shared and (header == 0) != shared, header
        with torch.no_grad():
            once, whole = (labelled_logits(model, **batch, share_header=share) for share in (True, False))
        assert torch.allclose(once[0], whole[0], atol=1e-4)
        assert all(torch.equal(a, b) for a, b in zip(once[1:], whole[1:])), "the same targets and rows"


class ScriptedValidation(SoftModule):
    """The real QLoRA module whose validation reports a scripted accuracy per round, and per-item
    results to match (of `items` items the first `items * acc` right), so that early stopping
    has something to detect."""

    def __init__(self, *args, script: list[float], items: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.script, self.items = script, items

    def validation_step(self, batch, batch_idx):
        acc = self.script[self.current_epoch]
        self.log("val/mc_acc", acc, batch_size=1)
        self.mc_results = [(i, i < self.items * acc, 0.1 * i) for i in range(self.items)]


def scripted_fit(tiny_model, tmp_path, script: list[float], items: int, callbacks: list) -> tuple[L.Trainer, Path]:
    """A real Trainer and BootstrapCallback over len(script) rounds of ScriptedValidation."""
    out, rounds = tmp_path / "store", len(script)
    bootstrap = BootstrapCallback(rounds=rounds, out_dir=str(out), sampler=SamplerSettings(backend="hf"),
                                  icl=IclSettings(examples=2), sampling=SamplingSettings(max_new_tokens=8),
                                  filters=FilterSettings(truncated="keep"))
    dm = SoftDataModule(prompts_per_round=6, rounds=rounds, val_limit=2, tokenizer=tiny_model, batch_size=3)
    module = ScriptedValidation(tiny_model, quantization="none", compute_dtype="float32", lora_r=8,
                                script=script, items=items)
    trainer = L.Trainer(accelerator="cpu", max_epochs=rounds, reload_dataloaders_every_n_epochs=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0, callbacks=[bootstrap, *callbacks])
    trainer.fit(module, datamodule=dm)
    return trainer, out


@pytest.mark.slow
def test_early_stop_keeps_the_best_round_and_reports_every_round(tiny_model, tmp_path):
    # EarlyStopping decides at the end of the training epoch (its default here): the next round
    # is generated only when Lightning asks for its data, so nothing is wasted.
    trainer, out = scripted_fit(tiny_model, tmp_path, [0.5, 0.7, 0.6, 0.4], 10, [
        EarlyStopping("val/mc_acc", mode="max", patience=1), ModelCheckpoint(monitor="val/mc_acc", mode="max",
                                                                             save_last=True)])
    assert trainer.current_epoch == 3 and not (out / "round_3").exists(), "round 3 must not be generated"
    note = json.loads((out / "best" / "best.json").read_text())
    assert note["round"] == 1 and note["value"] == pytest.approx(0.7) and note["monitor"] == "val/mc_acc"
    assert filecmp.cmp(out / "best" / "adapter" / "adapter_model.safetensors",
                       out / "round_1" / "adapter" / "adapter_model.safetensors", shallow=False)
    rows = (out / "rounds.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[0].startswith("round,")
    assert {"gen/entropy", "gen/distinct2", "val/mc_acc", "generation_s", "train_s"} <= set(rows[0].split(","))
    assert (out / "rounds.png").stat().st_size > 1000
    # Per-item results, the interval and the paired comparison with the best round (round 1: items 0-6).
    manifest = json.loads((out / "round_0" / "manifest.json").read_text())
    assert manifest["validation"]["correct"] == [1] * 5 + [0] * 5 and manifest["validation"]["items"] == 10
    table = {int(row["round"]): row for row in csv.DictReader(io.StringIO((out / "rounds.csv").read_text()))}
    assert float(table[0]["val/mc_acc_low"]) == pytest.approx(0.2366, abs=1e-4)  # Wilson, 5 of 10
    assert float(table[0]["val/mc_acc_high"]) == pytest.approx(0.7634, abs=1e-4)
    assert (table[0]["vs_best_only_this"], table[0]["vs_best_only_best"]) == ("0", "2")
    assert float(table[0]["vs_best_p"]) == pytest.approx(0.5)  # exact McNemar: 2 discordant items, both one way
    assert table[1]["vs_best_p"] == ""  # the best round itself

    # `validate` scores any round's adapter.
    result = run_cli("validate", "--config", str(ROOT / "configs" / "demo.yaml"),
                     "--model.model_name_or_path", tiny_model, "--model.lora_r", "8",
                     "--model.adapter", str(out / "best" / "adapter"), "--data.val_path", "demo",
                     "--data.val_limit", "4",
                     "--bootstrap.out_dir", str(tmp_path / "val"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/mc_acc" in result.stdout and "val/mc_acc_norm" in result.stdout


def test_intervals_and_paired_test_by_hand():
    assert stats.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert stats.mcnemar_p(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_p(3, 3) == 1.0 and stats.mcnemar_p(0, 0) == 1.0
    assert stats.mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)
    assert stats.paired([True, True, False, False], [True, False, True, True]) == {
        "only_this": 1, "only_reference": 2, "p": 1.0}


@pytest.mark.parametrize("protocol", ["likelihood", "true_false", "ab"])
def test_shared_prefix_scores_equal_one_row_per_continuation(protocol, tiny_model, tmp_path):
    """Each context prefilled once and its KV cache shared by its continuations (left-padded
    contexts, right-padded continuations) gives every continuation the log-likelihood a full row of
    its own gives; a protocol's accuracy follows from those by hand."""
    path, rows = small_mc_file(tmp_path, n=12)
    if protocol == "ab":  # the right choice and a wrong one, the right one first in even rows, second in odd
        pairs = [(row["choices"][row["label"]], row["choices"][row["label"] - 1]) for row in rows]
        rows = [{**row, "choices": list(pair[:: 1 - 2 * (i % 2)]), "label": i % 2}
                for i, (row, pair) in enumerate(zip(rows, pairs))]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dm = SoftDataModule(prompts=None, val_path=str(path), val_protocol=protocol, val_batch_items=5,
                        tokenizer=tiny_model)
    dm.setup("validate")
    items = dm.val_items
    module = SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8)
    module.configure_model()
    batch = collate_mc(items, dm.encoder.tokenizer.pad_token_id, protocol)
    shared = choice_logprobs(module.model, batch["context_ids"], batch["context_mask"], batch["choice_ids"],
                             batch["choice_mask"], batch["context_index"])
    units = [unit for item in items for unit in item["units"]]
    full = dm.encoder.collate([TrainExample("", context + c, [-100] * len(context) + c)
                               for context, continuations in units for c in continuations])
    reference = labelled_logprobs(module.model, full["input_ids"], full["attention_mask"], full["labels"])[0]
    assert len({len(context) for context, _ in units}) > 1, "contexts of different lengths exercise the padding"
    assert shared.tolist() == pytest.approx(reference.tolist(), abs=1e-4)

    # The protocol's picks, by hand from the reference log-likelihoods.
    it = iter(reference.tolist())
    expected = []
    for item in items:
        lls = [[next(it) for _ in continuations] for _, continuations in item["units"]]
        if protocol == "likelihood":
            scores = lls[0]
        elif protocol == "true_false":
            scores = [true - false for true, false in lls]
        else:
            scores = [(lls[0][0] - lls[0][1]) + (lls[1][1] - lls[1][0]), 0.0]
            scores[1] = -scores[0]
        expected.append(max(range(len(scores)), key=scores.__getitem__) == item["label"])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert metrics["val/mc_acc"] == pytest.approx(sum(expected) / len(expected), abs=1e-7)
    assert [right for _, right, _ in module.mc_results] == expected


def test_ab_needs_two_choices(tmp_path):
    path, _ = small_mc_file(tmp_path, n=3)
    with pytest.raises(ConfigError, match=r"line 1 has 4 choices; data.val_protocol=ab compares two"):
        SoftDataModule(prompts=None, val_path=str(path), val_protocol="ab")


@pytest.mark.slow
def test_paired_early_stopping_ignores_a_dip_inside_the_noise_and_stops_on_a_significant_fall(tiny_model,
                                                                                                tmp_path):
    """Of 40 items: 0.7 -> 0.6 is 4 items (McNemar p=0.125), 0.7 -> 0.3 is 16 (p < 0.001)."""
    script = [0.5, 0.7, 0.6, 0.3, 0.3]
    stopper = PairedEarlyStopping(patience=1)
    trainer, out = scripted_fit(tiny_model, tmp_path / "paired", script, 40, [stopper])
    assert trainer.current_epoch == 4 and (out / "round_3").exists() and not (out / "round_4").exists()
    assert stopper.wait == 1 and stopper.state_dict() == {"wait": 1}
    assert json.loads((out / "best" / "best.json").read_text())["round"] == 1, "compared with round 1 (28 of 40)"
    # Lightning's EarlyStopping on the same script stops at the dip.
    trainer, out = scripted_fit(tiny_model, tmp_path / "plain", script, 40,
                                [EarlyStopping("val/mc_acc", mode="max", patience=1)])
    assert trainer.current_epoch == 3 and not (out / "round_3").exists()


def test_diagnostics_of_a_round_whose_responses_were_all_dropped(tiny_model):
    """A collapsed round can lose every response to the filters; its diagnostics still come out."""
    from soft_lightning.models.encoding import Encoder
    from soft_lightning.signals.diagnostics import generation_diagnostics

    records = [{"id": f"r{i}", "prompt": "Say it.", "response": "loop " * 30, "kept": False, "n_tokens": 30,
                "finish_reason": "length"} for i in range(3)]
    module = SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8)
    module.configure_model()
    stats_ = generation_diagnostics(records, encoder=Encoder.load(tiny_model), model=module.model, batch_size=2)
    assert stats_["gen/drop_rate"] == 1.0 and math.isnan(stats_["gen/entropy"])

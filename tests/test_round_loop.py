"""The two-round CLI run, end to end, with each sampler backend (real subprocesses)."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from soft_lightning.models.precision import resolve
from soft_lightning.rounds.store import RoundStore
from soft_lightning.utils.files import sha256_file
from tests.helpers.cli import run_cli, tiny_run_args

RECORD_FIELDS = {"id", "prompt", "response", "icl_ids", "n_tokens", "finish_reason", "mean_logprob", "kept"}


pytestmark = pytest.mark.slow  # a CLI run per backend


@pytest.fixture(scope="module", params=["hf", "vllm"])
def finished_run(request, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"run-{request.param}")
    result = run_cli(*tiny_run_args(tiny_model, out, request.param))
    assert result.returncode == 0, result.stderr[-4000:]
    return request.param, out, result


def test_store_layout_and_disjoint_rounds(finished_run):
    sampler, out, result = finished_run
    store = RoundStore(out)
    ids_per_round = []
    for r in (0, 1):
        assert store.is_generated(r), f"round {r} has no valid manifest"
        manifest = store.read_manifest(r)
        assert manifest["round"] == r and manifest["data_sha256"] == sha256_file(store.data_path(r))
        assert manifest["sampler"]["backend"] == sampler
        assert manifest["prompts"] == 6 and manifest["kept"] + sum(manifest["dropped"].values()) == 6
        assert manifest["adapter"] == (None if r == 0 else str(store.adapter_dir(0)))
        records = store.read_records(r)
        assert len(records) == 6 and all(RECORD_FIELDS <= set(rec) for rec in records)
        assert all(rec["n_tokens"] > 0 and rec["mean_logprob"] <= 0 for rec in records)
        assert all(len(rec["icl_ids"]) == 3 for rec in records)
        assert (store.adapter_dir(r) / "adapter_model.safetensors").is_file()
        ids_per_round.append({rec["id"] for rec in records})
    assert not ids_per_round[0] & ids_per_round[1], "rounds must use disjoint prompt slices"
    assert not (out / "round_2").exists()
    assert "per-round summary" in result.stderr + result.stdout


def test_the_round_table_holds_the_constant_decline_s_floor_and_the_run_warns_at_or_below_it(finished_run):
    """`val/decline` is the harmful share of the validation prompts (what refusing every prompt is
    aligned on); the run warns exactly when its best round's aligned share is no higher."""
    _, out, result = finished_run
    store = RoundStore(out)
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    for row in rows:
        records = store.read_zero_shot(int(row["round"]))["records"]
        assert sum(bool(rec.get("harmful")) for rec in records) > 0, "the tiny run's validation has no harmful prompt"
        assert float(row["val/decline"]) == sum(bool(rec.get("harmful")) for rec in records) / len(records)
    best = next(row for row in rows if int(row["round"]) == store.best_round())
    warned = f"[soft] warning: the best round {best['round']} is aligned on" in result.stderr + result.stdout
    assert warned == (float(best["val/aligned"]) <= float(best["val/decline"]) + 1e-6)


def test_manifest_records_the_dtype_actually_used(finished_run):
    """The demo config's `compute_dtype: auto`, resolved for this CPU, is what trained and sampled."""
    sampler, out, result = finished_run
    expected = resolve("auto", None, "cpu")
    numerics = RoundStore(out).read_manifest(0)["numerics"]
    assert numerics["dtype"] == numerics["trainable_dtype"] == expected.dtype
    assert numerics["trainer_precision"] == expected.trainer_precision and numerics["reason"] == expected.reason
    # vLLM and the hf merged copy load their own weights in the run's dtype.
    assert numerics["sampler_dtype"] == expected.dtype
    assert f"[soft] numerics: {expected.dtype}, trainer.precision={expected.trainer_precision}" in result.stderr


def test_adapters_change_and_load_with_peft(finished_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, out, _ = finished_run
    store = RoundStore(out)
    w0 = load_file(store.adapter_dir(0) / "adapter_model.safetensors")
    w1 = load_file(store.adapter_dir(1) / "adapter_model.safetensors")
    assert w0.keys() == w1.keys() and any("lora_B" in k for k in w0)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0), "round 1 training did not change the adapter"
    assert any(w0[k].abs().sum() > 0 for k in w0 if "lora_B" in k), "round 0 adapter is still the init"
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, str(store.adapter_dir(1)))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    key = next(k for k in w1 if "lora_B" in k)
    match = [v for k, v in loaded.items() if k.replace(".default", "").endswith(key.split("base_model.model.", 1)[1])]
    assert match and torch.allclose(match[0].float(), w1[key].float())


def test_checkpoints_hold_the_adapter_and_the_loop_position_only(finished_run):
    """The plan is in the store; a checkpoint carries weights, optimizer and loop position."""
    _, out, _ = finished_run
    round_end = out / "checkpoints" / "last-round-end.ckpt"
    assert round_end.is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    state = torch.load(round_end, map_location="cpu", weights_only=True)
    assert state["epoch"] == 3, "the round-end checkpoint of the last round (2 rounds x 2 epochs)"
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"]), "LoRA weights only"
    assert not any(v for k, v in state["callbacks"].items() if "BootstrapCallback" in k), "no callback state"
    plan = json.loads((out / "plan.json").read_text())
    assert [[p["id"] for p in s] for s in plan["rounds"]] == [[rec["id"] for rec in RoundStore(out).read_records(r)]
                                                              for r in (0, 1)]
    settings = plan["identity"]["settings"]
    assert settings["data.prompts_per_round"] == 6 and len(settings["data.prompts"]) == 64


def test_without_regeneration_every_round_trains_on_round_0s_data(tiny_model, tmp_path):
    """The same-steps control (`bootstrap.regenerate: false`): one round's prompts suffice, rounds
    after round 0 hold round 0's records byte for byte and say so, and training goes on over them
    (2 rounds: the demo config's early stopping may end a tiny run after its second)."""
    from tests.helpers.cli import run_here
    from tests.helpers.files import pool_file

    pool = pool_file(tmp_path, [{"id": f"p{i}", "prompt": f"Name a fruit that starts with the letter {c}."}
                                for i, c in enumerate("ABCDEF")])
    args = [*tiny_run_args(tiny_model, tmp_path / "run", "hf", "--data.prompts", pool)]  # 2 rounds
    refused = run_here(*args)
    assert refused.returncode != 0 and "has 6 usable rows but bootstrap.rounds=2 x data.prompts_per_round=6 needs 12" \
        in refused.stderr, refused.stderr[-2000:]
    # (a spawned sampler: nothing generates round 1, so only training can stop round 0's zero-shot child)
    result = run_cli(*args, "--bootstrap.regenerate", "false", "--bootstrap.sampler.process", "spawn")
    assert result.returncode == 0, result.stderr[-4000:]
    store = RoundStore(tmp_path / "run")
    assert store.finished_rounds() == [0, 1]
    assert store.read_zero_shot(1)["engine_start_seconds"] > 0, "round 1 trained beside round 0's zero-shot child"
    plan = store.read_plan()
    assert plan.rounds[1] == plan.rounds[0] and len(plan.rounds[0]) == 6
    assert plan.identity["settings"]["bootstrap.regenerate"] is False
    first = store.read_manifest(0)
    assert sha256_file(store.data_path(1)) == first["data_sha256"]
    manifest = store.read_manifest(1)
    assert manifest["reused_from"] == 0 and manifest["generated_now"] == 0 and manifest["kept"] == first["kept"]
    steps = first["training"]["optimizer_steps"]
    assert steps > 0 and manifest["training"]["optimizer_steps"] == 2 * steps, "the same steps again"
    weights = [load_file(store.adapter_dir(r) / "adapter_model.safetensors") for r in range(2)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "round 1 trained on"
    assert "round 1: trains on round 0's data again" in result.stderr + result.stdout


def test_planned_train_batches_train_a_full_round_s_steps_whatever_is_held_out_or_dropped(tiny_model, tmp_path):
    """`data.train_batches: planned` (steps matched in fact): a round whose training pairs are
    fewer than its prompts (here: 40% held out for val/loss) still trains the optimizer steps of
    a fully kept round, its pairs repeated in order; the manifest records them."""
    from soft_lightning.training.data import SoftDataModule

    result = run_cli(*tiny_run_args(tiny_model, tmp_path / "run", "hf", "--bootstrap.rounds", "1",
                                    "--data.batch_size", "1", "--data.val_holdout", "0.4",
                                    "--data.train_batches", "planned"))
    assert result.returncode == 0, result.stderr[-4000:]
    store = RoundStore(tmp_path / "run")
    held = SoftDataModule(val_holdout=0.4, seed=0).is_heldout
    trainable = [rec for rec in store.read_records(0) if rec["kept"] and not held(rec["id"])]
    assert 0 < len(trainable) < 6, "the check needs a round with fewer training pairs than prompts"
    assert store.read_manifest(0)["training"]["optimizer_steps"] == 2 * 6, "2 epochs x 6 planned batches"
    assert store.read_plan().identity["settings"]["data.train_batches"] == "planned"

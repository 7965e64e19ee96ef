"""Kill a real run with SIGKILL at each dangerous moment, resume with `--ckpt_path last`, and
compare with an uninterrupted run: every prompt once per round, nothing generated twice, the
same rounds and files."""

import json
import os
import signal
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from soft_lightning.store import RoundStore
from tests.conftest import ROOT, run_cli, tiny_run_args

# Every optimizer step checkpoints, so a kill mid-epoch has a mid-epoch checkpoint to resume.
EVERY_STEP = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                          "init_args": {"save_last": True, "every_n_train_steps": 1}}])


def args(model, out, *extra):
    return tiny_run_args(model, out, "hf", "--data.prompts_per_round", "10", "--data.batch_size", "2",
                         "--bootstrap.generation_chunk", "3", "--trainer.callbacks", EVERY_STEP, *extra)


def store_files(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and p.parts[len(out.parts)] not in ("checkpoints", "logs"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli(*args(tiny_model, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


KILLS = {
    "during round-0 generation": ("generated:0:1", 0, 6),   # 2 chunks of 3 written before the kill
    "mid-epoch training": ("train_step:3", None, None),
    "during round-1 generation": ("generated:1:0", 1, 3),
    "right after an adapter save": ("adapter_saved:0", None, None),
}


@pytest.mark.parametrize("case", list(KILLS))
def test_kill_and_resume_matches_an_uninterrupted_run(case, uninterrupted, tiny_model, tmp_path):
    point, killed_round, done_before = KILLS[case]
    out = tmp_path / "run"
    killed = run_cli(*args(tiny_model, out), env_extra={"SOFT_LIGHTNING_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed at {point}: {killed.stderr[-2000:]}"

    resumed = run_cli(*args(tiny_model, out, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    store, reference = RoundStore(out), RoundStore(uninterrupted)
    for r in (0, 1):
        ids = [rec["id"] for rec in store.read_records(r)]
        assert len(ids) == len(set(ids)) == 10, f"round {r}: every prompt exactly once"
        assert sorted(ids) == sorted(rec["id"] for rec in reference.read_records(r))
        assert store.is_generated(r)
    if killed_round is not None:
        manifest = store.read_manifest(killed_round)
        assert manifest["resumed_with"] == done_before, "prompts answered before the kill were generated again"
        assert manifest["generated_now"] == 10 - done_before
    assert store_files(out) == store_files(uninterrupted)


def test_resumed_weights_and_optimizer_equal_the_checkpoint(tiny_model, tmp_path, uninterrupted):
    """peft resumes are known to re-initialise adapters silently: check bit for bit."""
    import lightning as L

    from callbacks.bootstrap import BootstrapCallback
    from soft_lightning.data import SoftDataModule
    from soft_lightning.module import SoftModule

    ckpt_path = uninterrupted / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    module = SoftModule(tiny_model, lora_r=8, learning_rate=3e-4, warmup_steps=4)
    dm = SoftDataModule(prompts_per_round=10, rounds=2, val_path=None, tokenizer=tiny_model, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-true", max_epochs=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, reload_dataloaders_every_n_epochs=1,
                        callbacks=[BootstrapCallback(rounds=2, out_dir=str(uninterrupted), sampler="hf")])
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path))  # already finished: restores, trains nothing
    restored = {k: v for k, v in module.state_dict().items()}
    assert restored.keys() == ckpt["state_dict"].keys() and restored
    assert all(torch.equal(restored[k], ckpt["state_dict"][k]) for k in restored)
    saved_adapter = load_file(uninterrupted / "round_1" / "adapter" / "adapter_model.safetensors")
    for key, value in saved_adapter.items():
        match = [v for k, v in restored.items() if k.replace(".default", "").endswith(key.split("base_model.model.", 1)[1])]
        assert len(match) == 1 and torch.equal(match[0], value), key
    opt_saved = ckpt["optimizer_states"][0]["state"]
    opt_now = trainer.optimizers[0].state_dict()["state"]
    assert opt_saved.keys() == opt_now.keys()
    assert all(torch.equal(opt_saved[i]["exp_avg"], opt_now[i]["exp_avg"]) for i in opt_saved)


DDP = ("--config", str(ROOT / "configs" / "ddp.yaml"), "--trainer.accelerator", "cpu")


def test_two_process_ddp_covers_each_prompt_once_like_one_process(uninterrupted, tiny_model, tmp_path):
    out = tmp_path / "ddp"
    result = run_cli(*args(tiny_model, out, *DDP))
    assert result.returncode == 0, result.stderr[-3000:]
    store, reference = RoundStore(out), RoundStore(uninterrupted)
    for r in (0, 1):
        ids = [rec["id"] for rec in store.read_records(r)]
        assert len(ids) == len(set(ids)) == 10
        assert sorted(ids) == sorted(rec["id"] for rec in reference.read_records(r))
        assert store.read_manifest(r)["ranks"] == 2
        assert not list(store.round_dir(r).glob("data.rank*.jsonl")), "shards are removed once merged"
        assert not list(store.round_dir(r).glob(".adapter.*")), "an adapter save was interrupted or doubled"
    assert result.stderr.count("per-round summary") + result.stdout.count("per-round summary") == 1, \
        "reports happen on rank 0 only"
    assert store_files(out) == store_files(uninterrupted)


def test_ddp_kill_and_resume(uninterrupted, tiny_model, tmp_path):
    out = tmp_path / "ddp"
    killed = run_cli(*args(tiny_model, out, *DDP), env_extra={"SOFT_LIGHTNING_KILL_AT": "generated:1:0"})
    assert killed.returncode != 0
    resumed = run_cli(*args(tiny_model, out, *DDP, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    store = RoundStore(out)
    for r in (0, 1):
        ids = [rec["id"] for rec in store.read_records(r)]
        assert len(ids) == len(set(ids)) == 10 and store.is_generated(r)
    manifest = store.read_manifest(1)
    assert manifest["resumed_with"] == 6, "each rank had one chunk of 3 on disk before the kill"
    assert store_files(out) == store_files(uninterrupted)

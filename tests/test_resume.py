"""Kill a real run with SIGKILL at each dangerous moment, resume it with `--ckpt_path last`, and
compare it with an uninterrupted run: every prompt once per round, nothing generated twice, the
same files, and the same adapter weights."""

import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from soft_lightning.rounds.filters import FilterSettings
from soft_lightning.rounds.icl import IclSettings
from soft_lightning.rounds.store import RoundStore
from soft_lightning.sampler import SamplerSettings, SamplingSettings
from tests.helpers.cli import ORDERINGS, ROOT, resume_args, round_ids, run_cli, run_ok

pytestmark = pytest.mark.slow


def store_files(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and p.parts[len(out.parts)] not in ("checkpoints", "lightning_logs"))


def adapter(out, r):
    return load_file(RoundStore(out).adapter_dir(r) / "adapter_model.safetensors")


def assert_same_adapters(out, reference, rounds=(0, 1)):
    for r in rounds:
        got, want = adapter(out, r), adapter(reference, r)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in got), f"round {r}'s adapter differs from the reference"


def killed_then_resumed(point, cli_args):
    killed = run_cli(*cli_args, env_extra={"SOFT_LIGHTNING_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed at {point}: {killed.stderr[-2000:]}"
    return run_ok(*cli_args, "--ckpt_path", "last")


def stopped_in_turn(cli_args, points: dict[str, str], **env):
    """The run stopped at each of `points` in turn ({moment: kill point}; the first run fresh, the
    others resumed with `--ckpt_path last`): yields each moment and its stopped process."""
    for n, (moment, point) in enumerate(points.items()):
        yield moment, run_cli(*cli_args, *(["--ckpt_path", "last"] if n else []),
                              env_extra={"SOFT_LIGHTNING_KILL_AT": point, **env})


@pytest.fixture(scope="module")
def uninterrupted(reference):
    return reference("none")


# The dangerous moments in the order a run meets them. One run is killed at each in turn, every
# resume going on from the state the kill before it left (a resume of a resume), and then finishes:
# 8 processes where a run killed at one moment each took 14.
KILLS = {
    "during round-0 generation": "generated:0:1",   # 2 chunks of 3 written before the kill
    "mid-epoch training": "train_step:3",
    "after the last batch of round 0 (its checkpoint passed over: round 0 retrained)": "round_end:0",
    "right after an adapter save": "adapter_saved:0",
    "right after the round-end checkpoint": "round_end_saved:0",
    "during round-1 generation": "generated:1:0",   # 1 chunk of 3 written before the kill
    "after the last batch of the last round": "round_end:1",
}


def test_killed_at_each_dangerous_moment_in_turn_the_run_resumes_to_the_uninterrupted_one(
        uninterrupted, tiny_model, tmp_path):
    out = tmp_path / "run"
    cli_args = resume_args(tiny_model, out)
    for moment, killed in stopped_in_turn(cli_args, KILLS):
        assert killed.returncode == -signal.SIGKILL, f"the run was not killed {moment}: {killed.stderr[-2000:]}"
    run_ok(*cli_args, "--ckpt_path", "last")
    store = RoundStore(out)
    assert round_ids(out) == round_ids(uninterrupted), "every round has exactly its planned prompts"
    assert all(len(set(ids)) == 10 for ids in round_ids(out)) and store.is_generated(1)
    for r, done_before in ((0, 6), (1, 3)):
        manifest = store.read_manifest(r)
        assert (manifest["resumed_with"], manifest["generated_now"]) == (done_before, 10 - done_before), \
            f"round {r}: prompts answered before the kill were generated again"
    assert store_files(out) == store_files(uninterrupted)
    # Resumed mid-epoch, the run continues with the next batch (replaying the epoch from its
    # first batch would train some pairs twice): the weights equal the uninterrupted run's.
    assert_same_adapters(out, uninterrupted)


def test_kill_during_the_next_rounds_generation_keeps_the_round_with_the_shipped_checkpoints(
        uninterrupted, tiny_model, tmp_path):
    """demo.yaml's ModelCheckpoint saves at epoch ends only; round 0's end is on disk before
    round 1 is generated, so the resume does not train round 0 again."""
    out = tmp_path / "run"
    cli_args = resume_args(tiny_model, out, checkpoints=None)
    killed = run_cli(*cli_args, env_extra={"SOFT_LIGHTNING_KILL_AT": "generated:1:0"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = (RoundStore(out).adapter_dir(0) / "adapter_model.safetensors").stat().st_mtime_ns
    resumed = run_ok(*cli_args, "--ckpt_path", "last")
    assert "no last checkpoint" not in resumed.stderr + resumed.stdout
    assert "round 0: generating" not in resumed.stderr + resumed.stdout
    assert (RoundStore(out).adapter_dir(0) / "adapter_model.safetensors").stat().st_mtime_ns == saved, \
        "round 0 was trained again"
    assert RoundStore(out).read_manifest(1)["resumed_with"] == 3
    assert round_ids(out) == round_ids(uninterrupted)
    assert_same_adapters(out, uninterrupted)


def test_a_curriculum_run_resumes_with_the_planned_prompts_and_order(reference, tiny_model, tmp_path):
    """The pool order lives in the plan and each round's order in its records: a resume never
    scores the pool again. Both orderings at once (within and across rounds; no ordering is the
    test above): each alone runs a subset of the same code."""
    ordering, out = "both", tmp_path / "run"
    resumed = killed_then_resumed("generated:1:0", resume_args(tiny_model, out, *ORDERINGS[ordering]))
    assert "pool ordered" not in resumed.stderr + resumed.stdout, "the resume scored the pool again"
    assert round_ids(out) == round_ids(reference(ordering))
    for r in (0, 1):
        mine, theirs = RoundStore(out).read_records(r), RoundStore(reference(ordering)).read_records(r)
        assert [(x["id"], x.get("position")) for x in mine] == [(x["id"], x.get("position")) for x in theirs]
    assert_same_adapters(out, reference(ordering))


@pytest.mark.parametrize("ordering", ["none", "both"])
def test_two_more_rounds_continue_a_finished_run_with_fresh_prompts(ordering, reference, tiny_model, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference(ordering), out)
    before = {r: RoundStore(out).read_manifest(r)["data_sha256"] for r in (0, 1)}
    more = ("--bootstrap.rounds", "4", "--ckpt_path", "last")
    resumed = run_ok(*resume_args(tiny_model, out, *ORDERINGS[ordering], *more))
    assert "plan extended to 4 rounds" in resumed.stderr + resumed.stdout
    assert "pool ordered" not in resumed.stderr + resumed.stdout
    ids = round_ids(out, range(4))
    assert all(len(set(r)) == 10 for r in ids) and len(set().union(*map(set, ids))) == 40, "rounds are disjoint"
    assert {r: RoundStore(out).read_manifest(r)["data_sha256"] for r in (0, 1)} == before, "rounds 0-1 untouched"
    assert RoundStore(out).is_trained(3) and (out / "rounds.csv").read_text().count("\n") == 5
    if ordering == "both":  # each planned block of rounds easiest first, by the saved order
        difficulty = [sorted(rec["pool_difficulty"] for rec in RoundStore(out).read_records(r)) for r in range(4)]
        assert difficulty[0][-1] <= difficulty[1][0] and difficulty[2][-1] <= difficulty[3][0]


# Preemptions in the order a run meets them, one run stopped at each in turn (as KILLS above).
SIGTERMS = {"mid-epoch training": "train_step:3",
            # round 0's relevance scoring (the resumed process has the base model's on disk), after
            # its 2nd batch of 3
            "during round-0 validation scoring": "scored:relevance:1",
            "during round-1 generation": "generated:1:0"}


def test_sigterm_at_each_moment_in_turn_stops_cleanly_and_the_resume_loses_and_repeats_nothing(
        uninterrupted, tiny_model, tmp_path):
    """A real SIGTERM (a preemption): the chunk in flight is kept, a checkpoint is written (the
    demo's own ModelCheckpoint saves at epoch ends only), the exit code says so, and the resumed
    run equals an uninterrupted one. Stopped in a round's zero-shot scoring, after the batch in
    hand (scoring takes minutes on a CPU), the resume redoes the round and its signals."""
    out = tmp_path / "run"
    cli_args = resume_args(tiny_model, out, "--bootstrap.score_batch_size", "2", checkpoints=None)
    preempted, base = out / "checkpoints" / "last-preempted.ckpt", RoundStore(out).zero_shot_path("base")
    written = base_scored = None
    for moment, stopped in stopped_in_turn(cli_args, SIGTERMS, SOFT_LIGHTNING_SIGNAL="TERM"):
        assert stopped.returncode == 143, f"{moment}: {stopped.stderr[-3000:]}"
        assert "stopped by SIGTERM" in stopped.stderr and "Traceback" not in stopped.stderr, moment
        assert preempted.is_file() and preempted.stat().st_mtime_ns != written, f"{moment}: no checkpoint written"
        written = preempted.stat().st_mtime_ns
        if moment.endswith("scoring"):
            assert "round 0 zero-shot answers" in stopped.stderr and base_scored == base.stat().st_mtime_ns, \
                "the SIGTERM should stop round 0's scoring, not the base model's"
            assert not RoundStore(out).zero_shot_path(0).is_file(), "the scoring went on after the SIGTERM"
        base_scored = base.stat().st_mtime_ns
    run_ok(*cli_args, "--ckpt_path", "last")
    assert round_ids(out) == round_ids(uninterrupted)
    manifest = RoundStore(out).read_manifest(1)
    assert (manifest["resumed_with"], manifest["generated_now"]) == (3, 7), "the chunk in flight was lost"
    assert_same_adapters(out, uninterrupted)
    for r in (0, 1):
        assert RoundStore(out).read_zero_shot(r)["quality"] == RoundStore(uninterrupted).read_zero_shot(r)["quality"]


def test_resumed_weights_and_optimizer_equal_the_checkpoint(tiny_model, tmp_path, uninterrupted):
    """peft resumes are known to re-initialise adapters silently: check bit for bit (on a copy
    of the store: no test changes another's files)."""
    import lightning as L

    from soft_lightning.callbacks.bootstrap import BootstrapCallback
    from soft_lightning.training.data import SoftDataModule
    from soft_lightning.training.module import SoftModule

    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    ckpt_path = out / "checkpoints" / "last-round-end.ckpt"  # (last.ckpt, after the last batch, is refused)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    module = SoftModule(tiny_model, lora_r=8, learning_rate=3e-3, warmup_steps=1)
    dm = SoftDataModule(prompts="rules", prompts_per_round=10, rounds=2, epochs_per_round=2, val_path=None,
                        tokenizer=tiny_model, batch_size=2, max_prompt_tokens=256, max_length=512)  # demo.yaml's
    trainer = L.Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, reload_dataloaders_every_n_epochs=1,
                        callbacks=[BootstrapCallback(  # the CLI run's bootstrap settings (demo.yaml + tiny_run_args)
                            rounds=2, epochs_per_round=2, out_dir=str(out), sampler=SamplerSettings(backend="hf"),
                            icl=IclSettings(principles="rules", pool="rules"),
                            sampling=SamplingSettings(max_new_tokens=12), filters=FilterSettings(truncated="keep"))])
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path))  # already finished: restores, trains nothing
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"]), "the checkpoint holds LoRA only"
    restored = module.state_dict()
    assert all(torch.equal(restored[k], ckpt["state_dict"][k]) for k in ckpt["state_dict"])
    saved_adapter, lora = adapter(uninterrupted, 1), module.adapter_state()
    assert saved_adapter.keys() == lora.keys() and len(lora) == len(ckpt["state_dict"])
    assert all(torch.equal(saved_adapter[k], lora[k]) for k in lora)
    opt_saved = ckpt["optimizer_states"][0]["state"]
    opt_now = trainer.optimizers[0].state_dict()["state"]
    assert opt_saved.keys() == opt_now.keys()
    assert all(torch.equal(opt_saved[i]["exp_avg"], opt_now[i]["exp_avg"]) for i in opt_saved)


DDP = ("--config", str(ROOT / "configs" / "ddp.yaml"), "--trainer.accelerator", "cpu")


def test_two_process_ddp_killed_and_resumed_covers_each_prompt_once_like_one_process(uninterrupted, tiny_model,
                                                                                      tmp_path):
    out = tmp_path / "ddp"
    # Each rank kills itself after its first chunk of round 1, once both ranks' chunks are on disk:
    # Lightning's launcher kills rank 0 within seconds of rank 1's death, before a slow CPU's rank 0
    # has written its chunk (failed so on a Zen 1 EPYC).
    killed = run_cli(*resume_args(tiny_model, out, *DDP), env_extra={
        "SOFT_LIGHTNING_KILL_AT": "generated:1:0", "SOFT_LIGHTNING_KILL_WHEN": f"{out}/round_1/data.rank*.jsonl:2"})
    assert killed.returncode != 0
    resumed = run_ok(*resume_args(tiny_model, out, *DDP, "--ckpt_path", "last"))
    store = RoundStore(out)
    assert round_ids(out) == round_ids(uninterrupted) and store.is_generated(1)
    assert store.read_manifest(1)["resumed_with"] == 6, "each rank had one chunk of 3 on disk before the kill"
    for r in (0, 1):
        assert store.read_manifest(r)["ranks"] == 2
        assert not list(store.round_dir(r).glob("data.rank*.jsonl")), "shards are removed once merged"
        assert not list(store.round_dir(r).glob(".adapter.*")), "an adapter save was interrupted or doubled"
    assert resumed.stderr.count("per-round summary") + resumed.stdout.count("per-round summary") == 1, \
        "reports happen on rank 0 only"
    assert store_files(out) == store_files(uninterrupted)


def test_a_checkpoint_of_another_adapter_is_refused_by_name_and_shape(tiny_model):
    """Lightning loads checkpoints non-strictly (the base is not in them): the LoRA names and
    shapes are checked before, so another rank or target list is one clear error."""
    import lightning as L

    from soft_lightning.training.module import SoftModule
    from soft_lightning.utils.errors import ConfigError

    def lora(**kwargs):
        module = SoftModule(tiny_model, quantization="none", compute_dtype="float32", **kwargs)
        module.configure_model()
        module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        return module, {k: v for k, v in module.state_dict().items() if k in module.adapter_keys()}

    module, own = lora(lora_r=8)
    module.on_load_checkpoint({"state_dict": own})  # its own checkpoint passes
    with pytest.raises(ConfigError, match=r"the checkpoint's LoRA weights do not match this model's \(missing "
                                          r"\['model\.base_model\.model\.model\.layers\.0\.mlp"):
        module.on_load_checkpoint({"state_dict": lora(lora_r=8, target_modules=["q_proj"])[1]})
    with pytest.raises(ConfigError, match=r"other shapes \['model\.base_model.* \(4, 128\) vs \(8, 128\)'\]\): "
                                          r"was it saved with other model\.lora_r"):
        module.on_load_checkpoint({"state_dict": lora(lora_r=4)[1]})


def test_ckpt_path_last_passes_over_checkpoints_taken_after_an_epoch_s_last_batch(tmp_path):
    """Lightning resumes a checkpoint taken after an epoch's last batch (before the epoch ended)
    into the next epoch, counting the batches already done in it: wrong when the next round is
    longer. Those are marked, `--ckpt_path last` takes the newest unmarked one, and one handed
    directly is refused in a sentence."""
    import os
    from types import SimpleNamespace

    from soft_lightning.callbacks.bootstrap import CHECKPOINT_MARK, BootstrapCallback, resumable_checkpoint
    from soft_lightning.utils.errors import ConfigError

    for age, (name, after_last_batch) in enumerate([("last.ckpt", True), ("last-preempted.ckpt", True),
                                                    ("last-round-end.ckpt", False), ("last-v1.ckpt", False)]):
        torch.save({CHECKPOINT_MARK: {"after_last_batch": after_last_batch}}, tmp_path / name)
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))  # last.ckpt the newest
    assert resumable_checkpoint([tmp_path]) == tmp_path / "last-round-end.ckpt"
    (tmp_path / "last-round-end.ckpt").unlink()
    (tmp_path / "last-v1.ckpt").unlink()
    assert resumable_checkpoint([tmp_path]) is None, "only marked ones: the run resumes from its store"
    callback = BootstrapCallback(out_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="was saved after an epoch's last batch, before the epoch ended"):
        callback.on_load_checkpoint(SimpleNamespace(ckpt_path=str(tmp_path / "last.ckpt")), None,
                                    {CHECKPOINT_MARK: {"after_last_batch": True}})
    callback.on_load_checkpoint(SimpleNamespace(ckpt_path="x"), None, {CHECKPOINT_MARK: {"after_last_batch": False}})

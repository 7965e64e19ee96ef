"""Prompt synthesis: the model writes part of each round's prompts; they are cleaned, counted per
drop reason, planned once (a resume answers the same ones) and never repeat a pool prompt."""

import json
import signal

import pytest

from soft_lightning.rounds.store import RoundStore
from soft_lightning.rounds.synthesis import PromptSynthesis, SeedTask, clean_prompts, grams, load_seed_tasks, similarity
from tests.helpers.cli import ROOT, run_cli, tiny_run_args

SEEDS = [SeedTask("s1", "Write a four-line poem about waiting for a bus in the rain.", "writing"),
         SeedTask("s2", "How often should I water a cactus kept indoors?", "home and garden")]


def record(i: int, response: str, finish: str = "stop") -> dict:
    return {"id": f"c{i}", "response": response, "finish_reason": finish, "n_tokens": 9}


def test_cleaning_keeps_new_prompts_and_counts_every_drop_reason():
    candidates = [
        record(0, '1. "What are the health benefits of eating oats for breakfast?"'),  # kept, tidied
        record(1, "   "),
        record(2, "Describe the history of the Roman aqueducts in", finish="length"),
        record(3, "Why?"),
        record(4, "12345 678 91011 1213"),
        record(5, "Write a four-line poem about waiting for the bus in rain."),
        record(6, "What is the capital city of Australia and why was it chosen?"),
        record(7, "What are the health benefits of eating oats at breakfast?"),
        record(8, "Plan a weekend itinerary for a first visit to Lisbon on a small budget, including where to eat, "
                  "which neighbourhoods to walk through, and how to get around without a car."),
        record(9, "**Explain how tides are caused by the moon.**"),
        record(10, "Give me three tips for keeping basil alive on a windowsill."),
    ]
    provenance = {rec["id"]: {"topic": "t", "seed_ids": ["s1"]} for rec in candidates}
    existing = ["What is the capital city of Australia, and why was it chosen?"]
    kept, dropped = clean_prompts(candidates, r=2, want=2, provenance=provenance, existing=existing, seeds=SEEDS,
                                  settings=PromptSynthesis(), too_long=lambda text: len(text) > 150)
    assert [p["prompt"] for p in kept] == ["What are the health benefits of eating oats for breakfast?",
                                           "Explain how tides are caused by the moon."]
    assert kept[0] == {"id": "c0", "prompt": kept[0]["prompt"], "source": "synthesized", "round": 2, "topic": "t",
                       "seed_ids": ["s1"]}
    assert dropped == {"empty": 1, "unfinished": 1, "too_short": 1, "degenerate": 1, "copies_seed": 1,
                       "duplicates_pool": 1, "duplicates_batch": 1, "too_long": 1, "surplus": 1}
    assert len(kept) + sum(dropped.values()) == len(candidates)


def test_near_duplicates_are_found_in_a_script_without_spaces():
    question = grams("東京で一番おいしいラーメン屋はどこですか？")  # (where is the best ramen in Tokyo?)
    same = similarity(question, grams("東京で一番おいしいラーメン屋はどこ？"))
    other = similarity(question, grams("大阪の天気はどうですか？"))
    assert same >= PromptSynthesis().max_similarity > other


def test_bundled_seed_tasks_cover_many_topics():
    tasks = load_seed_tasks("default")
    assert len(tasks) >= 30 and len({t.topic for t in tasks}) >= 15 and len({t.id for t in tasks}) == len(tasks)


@pytest.mark.slow
def test_a_synthesis_run_grows_the_pool_and_a_resume_answers_the_same_prompts(smollm2_dir, tmp_path):
    """The demo model writes 4 of each round's 8 prompts; killed right after round 1's prompts
    are planned, the resumed run answers exactly those. (One epoch a round, and the resume killed
    at round 1's first training step: what follows is tested elsewhere.)"""
    out = tmp_path / "run"
    args = tiny_run_args(smollm2_dir, out, "vllm", "--data.prompts_per_round", "8", "--data.batch_size", "4",
                         "--bootstrap.prompt_synthesis.per_round", "4", "--bootstrap.prompt_synthesis.topics", "4",
                         "--bootstrap.sampling.max_new_tokens", "24", "--model.lora_r", "8",
                         "--bootstrap.epochs_per_round", "1",
                         "--bootstrap.icl.examples", "1")  # (shorter prompts: the synthesis is tested)
    killed = run_cli(*args, env_extra={"SOFT_LIGHTNING_KILL_AT": "synthesized:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    store = RoundStore(out)
    before = store.read_plan()
    first_step_of_round_1 = store.read_manifest(0)["training"]["optimizer_steps"] + 1
    resumed = run_cli(*args, "--ckpt_path", "last",
                      env_extra={"SOFT_LIGHTNING_KILL_AT": f"train_step:{first_step_of_round_1}"})
    assert resumed.returncode == -signal.SIGKILL, resumed.stderr[-3000:]
    plan = store.read_plan()
    assert plan.rounds == before.rounds and plan.synthesis["topics"] == before.synthesis["topics"], \
        "the resume synthesized round 1 again"

    rows = plan.pool["rows"]
    synthesized = [[p for p in plan.prompts(r) if p.get("source") == "synthesized"] for r in range(2)]
    assert all(len(plan.file_prompts(r)) == 4 for r in range(2))
    assert sum(map(len, synthesized)) > 0, f"no synthesized prompt survived cleaning: {plan.synthesis}"
    texts = [" ".join(p["prompt"].lower().split()) for r in range(2) for p in plan.prompts(r)]
    ids = [p["id"] for r in range(2) for p in plan.prompts(r)]
    assert len(set(texts)) == len(texts) and len(set(ids)) == len(ids), "a prompt was reused across rounds"
    pool_file = [json.loads(line) for line in store.synthesized_path.read_text().splitlines()]
    assert pool_file == synthesized[0] + synthesized[1]
    assert all(p["source"] == "synthesized" and p["seed_ids"] and p["topic"] for p in pool_file)
    for r in range(2):
        manifest = store.read_manifest(r)
        stats = manifest["synthesis"]
        assert stats["kept"] == len(synthesized[r])
        assert stats["kept"] + sum(stats["dropped"].values()) == stats["candidates"] == 8
        assert [rec["id"] for rec in store.read_records(r)] == [p["id"] for p in plan.prompts(r)]
    assert store.read_manifest(1)["synthesis"]["pool_size"] == rows + len(pool_file) > rows



@pytest.mark.slow
def test_two_ranks_synthesize_what_one_does(smollm2_dir, tmp_path):
    """Under DDP each rank writes half the candidates; gathered, both ranks clean them into the
    plan one process writes (greedy synthesis, one request per batch, so the runs compare). Each
    run is killed once the plan holds round 0's prompts: what follows is tested elsewhere."""
    plans = []
    for name, extra in (("one", ()), ("ddp", ("--config", str(ROOT / "configs" / "ddp.yaml"),
                                               "--trainer.accelerator", "cpu"))):
        out = tmp_path / name
        killed = run_cli(*tiny_run_args(smollm2_dir, out, "hf", "--bootstrap.rounds", "1", "--data.batch_size", "2",
                                        "--bootstrap.sampler.hf_batch_tokens", "1",
                                        "--bootstrap.prompt_synthesis.per_round", "3",
                                        "--bootstrap.prompt_synthesis.topics", "3",
                                        "--bootstrap.prompt_synthesis.sampling.temperature", "0",
                                        "--bootstrap.prompt_synthesis.sampling.max_new_tokens", "40", *extra),
                         env_extra={"SOFT_LIGHTNING_KILL_AT": "synthesized:0"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        plans.append(RoundStore(out).read_plan())
    one, ddp = plans
    assert one.synthesized(0)["candidates"] == 6 and one.synthesized(0)["kept"] > 0, one.synthesis
    assert ddp.rounds == one.rounds
    assert ddp.synthesis["topics"] == one.synthesis["topics"]
    assert ddp.synthesized(0)["dropped"] == one.synthesized(0)["dropped"]

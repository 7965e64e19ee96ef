"""The run plan: each round's slice of the pool, extended disjointly, reordered by SOFT+'s
across-round curriculum without changing which prompts are answered; the run identity."""

from soft_lightning.rounds.plan import (
    ADDED_LATER,
    LEFT_OUT,
    RunPlan,
    build_plan,
    extend_plan,
    flatten,
    identity_changes,
    run_identity,
    slices,
)
from soft_lightning.training.data import SoftDataModule
from tests.helpers.files import pool_file


def test_plan_extension_continues_the_sequence_disjointly(tmp_path, tiny_model):
    rows = [{"id": f"p{i}", "prompt": f"Prompt number {i}"} for i in range(30)]
    dm = SoftDataModule(prompts=pool_file(tmp_path, rows), prompts_per_round=4, rounds=2, val_path=None,
                        tokenizer=tiny_model)
    dm.setup("fit")
    plan = build_plan({"seed": 0}, draw=dm.draw_prompts, rounds=2, per_round=4, pool_stats=dm.pool_stats)
    plan.write(tmp_path / "plan.json")
    again = RunPlan.read(tmp_path / "plan.json")
    assert again == plan
    fresh = SoftDataModule(prompts=pool_file(tmp_path, rows), prompts_per_round=4, rounds=4, val_path=None,
                           tokenizer=tiny_model)
    fresh.setup("fit")
    longer = extend_plan(again, draw=fresh.draw_prompts, rounds=4, per_round=4, pool_stats=fresh.pool_stats)
    assert longer.rounds[:2] == plan.rounds
    ids = [p["id"] for s in longer.rounds for p in s]
    assert len(ids) == len(set(ids)) == 16
    four_at_once = build_plan({"seed": 0}, draw=fresh.draw_prompts, rounds=4, per_round=4, pool_stats=fresh.pool_stats)
    assert longer.rounds == four_at_once.rounds, "two more rounds get what a 4-round plan gives them"


def test_identity_changes_name_the_keys_and_ignore_the_path():
    before = {"version": 2, "settings": {"model.model_name_or_path": "m", "bootstrap.seed": 0, "data.prompts": "x"},
              "paths": {"data.prompts": "/a/p.jsonl"}}
    assert identity_changes(before, {**before, "paths": {"data.prompts": "/moved/p.jsonl"}}) == []
    after = {**before, "settings": {**before["settings"], "bootstrap.seed": 7, "data.prompts": "y"}}
    assert identity_changes(before, after) == ["bootstrap.seed", "data.prompts"]


# The settings deliberately left out of the run identity (rounds/plan.py's LEFT_OUT, with a reason
# each): changing one of them on resume is allowed. Every other setting of the model, data and
# bootstrap sections changes what a round produces, and a resume that changes it is refused.
DELIBERATELY_LEFT_OUT = {
    "bootstrap.rounds", "bootstrap.out_dir", "bootstrap.zero_shot", "bootstrap.score_batch_size",
    "bootstrap.generation_chunk", "bootstrap.sampler.process", "bootstrap.sampler.hf_batch_tokens",
    "bootstrap.sampler.vllm.gpu_memory_utilization", "bootstrap.sampler.vllm.kv_cache_memory_bytes",
    "bootstrap.sampler.vllm.enforce_eager", "bootstrap.sampler.vllm.sleep_between_rounds",
    "model.gradient_checkpointing", "model.trust_remote_code",
    "data.num_workers", "data.val_path", "data.val_limit", "data.val_format", "data.val_protocol",
    "data.val_batch_items", "data.tokenizer", "data.rounds", "data.epochs_per_round", "data.seed",
    "data.synthesized_per_round", "data.regenerate",
}


def default_sections() -> dict[str, dict]:
    """Every setting of the three sections at its default, as a run hands them to the identity."""
    from soft_lightning.callbacks.bootstrap import BootstrapCallback
    from soft_lightning.training.module import SoftModule

    return {"model": dict(SoftModule().hparams), "data": dict(SoftDataModule().hparams),
            "bootstrap": BootstrapCallback().run.settings}


def test_the_identity_holds_every_setting_but_those_left_out_on_purpose():
    assert set(LEFT_OUT) == DELIBERATELY_LEFT_OUT and all(LEFT_OUT.values()), "each left-out setting says why"
    sections = default_sections()
    every = {k for section, settings in sections.items() for k in flatten(section, settings)}
    assert all(any(k == left or k.startswith(left + ".") for k in every) for left in LEFT_OUT), "a stale LEFT_OUT key"
    identity = run_identity(sections)
    kept = set(identity["settings"])
    for key in every:
        left_out = any(key == left or key.startswith(left + ".") for left in LEFT_OUT)
        switched_off = key.startswith(("bootstrap.prompt_synthesis.", "bootstrap.icl.self_examples.")) and not \
            key.endswith("prompt_synthesis.per_round") or key in ADDED_LATER  # (at their default: absent)
        assert (key in kept) == (not left_out and not switched_off), key
    assert {"bootstrap.icl.examples", "bootstrap.icl.strategy", "bootstrap.sampling.temperature",
            "bootstrap.sampler.backend", "bootstrap.filters.max_prompt_overlap", "model.learning_rate",
            "data.max_length", "data.prompts"} <= kept
    assert len(identity["settings"]["bootstrap.icl.principles"]) == 64, "a file is held by its sha256"
    assert identity["paths"]["data.prompts"].endswith("demo_prompts.jsonl")
    synthesis = run_identity({**sections, "bootstrap": {**sections["bootstrap"],
                                                         "prompt_synthesis": {"per_round": 2, "topics": 3}}})
    assert synthesis["settings"]["bootstrap.prompt_synthesis.topics"] == 3, "an active feature's settings count"
    reused = run_identity({**sections, "bootstrap": {**sections["bootstrap"], "regenerate": False}})
    assert reused["settings"]["bootstrap.regenerate"] is False, "a control run is not its regenerating twin"
    planned = run_identity({**sections, "data": {**sections["data"], "train_batches": "planned"}})
    assert planned["settings"]["data.train_batches"] == "planned", "a steps-matched run is not its twin"


def test_slices_wrap_only_past_the_end():
    prompts = [{"id": str(i)} for i in range(5)]
    assert [[p["id"] for p in s] for s in slices(prompts, 0, 3, 2)] == [["0", "1"], ["2", "3"], ["4", "0"]]


def test_an_across_round_curriculum_reorders_the_run_s_prompts_and_never_changes_them(tmp_path, tiny_model):
    """SOFT+ answers exactly the prompts SOFT does (the first rounds x per_round of the seeded pool
    order), split over the rounds easiest first; the rest of the pool is never planned, with or
    without the curriculum. Extra rounds take the next prompts, ordered among themselves."""
    rows = [{"id": f"p{i}", "prompt": f"Prompt number {i}"} for i in range(30)]

    def data(rounds):
        dm = SoftDataModule(prompts=pool_file(tmp_path, rows), prompts_per_round=4, rounds=rounds, val_path=None,
                            tokenizer=tiny_model)
        dm.setup("fit")
        return dm

    def by_number(prompts):  # a stand-in scorer: the prompt's number is its difficulty
        scores = [float(p["id"][1:]) for p in prompts]
        return sorted(range(len(prompts)), key=scores.__getitem__), scores

    dm = data(3)
    soft = build_plan({}, draw=dm.draw_prompts, rounds=3, per_round=4, pool_stats=dm.pool_stats)
    dm = data(3)
    plus = build_plan({}, draw=dm.draw_prompts, rounds=3, per_round=4, order=by_number, pool_stats=dm.pool_stats)
    ids = [[p["id"] for p in s] for s in plus.rounds]
    assert sorted(sum(ids, [])) == sorted(p["id"] for s in soft.rounds for p in s), "the same prompts as SOFT"
    difficulty = [[p["difficulty"] for p in s] for s in plus.rounds]
    assert sum(difficulty, []) == sorted(sum(difficulty, [])), "easiest first, across and within rounds"
    assert len(plus.order) == 30, "the whole pool's order is saved"

    dm = data(5)
    longer = extend_plan(plus, draw=dm.draw_prompts, rounds=5, per_round=4, pool_stats=dm.pool_stats)
    assert longer.rounds[:3] == plus.rounds
    dm = data(5)
    soft5 = build_plan({}, draw=dm.draw_prompts, rounds=5, per_round=4, pool_stats=dm.pool_stats)
    new = [p["id"] for s in longer.rounds[3:] for p in s]
    assert sorted(new) == sorted(p["id"] for s in soft5.rounds[3:] for p in s)
    extra = [p["difficulty"] for s in longer.rounds[3:] for p in s]
    assert extra == sorted(extra), "the extra rounds are ordered among themselves"

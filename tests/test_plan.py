"""The run plan: each round's slice of the pool, extended disjointly, reordered by SOFT+'s
across-round curriculum without changing which prompts are answered; the run identity."""

from soft_lightning.data import SoftDataModule
from soft_lightning.plan import RunPlan, build_plan, extend_plan, identity_changes, slices
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
    before = {"model": "m", "seed": 0, "prompts_path": "/a/p.jsonl", "prompts_sha256": "x"}
    assert identity_changes(before, {**before, "prompts_path": "/moved/p.jsonl"}) == []
    assert identity_changes(before, {**before, "seed": 7, "prompts_sha256": "y"}) == ["seed", "prompts_sha256"]


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

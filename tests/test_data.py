"""Prompt pool reading, cleaning and round slicing (the run plan); the round store's atomic files."""

import json

import pytest

from soft_lightning.data import SoftDataModule
from soft_lightning.errors import ConfigError
from soft_lightning.plan import RunPlan, build_plan, extend_plan, identity_changes, slices
from soft_lightning.store import RoundStore


def pool_file(tmp_path, rows, name="pool.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_pool_is_deduplicated_filtered_and_split_disjointly(tmp_path, tiny_model):
    rows = [{"id": f"p{i}", "prompt": f"Question number {i}?"} for i in range(12)]
    rows += [{"id": "dup", "prompt": "  question NUMBER 3? "}, {"id": "blank", "prompt": "   "},
             {"id": "long", "prompt": "word " * 200}]
    dm = SoftDataModule(prompts=pool_file(tmp_path, rows), prompts_per_round=4, rounds=3, val_path=None,
                        max_prompt_tokens=50, tokenizer=tiny_model)
    dm.setup("fit")
    plan = build_plan({}, draw=dm.draw_prompts, rounds=3, per_round=4, pool_stats=dm.pool_stats)
    assert plan.pool == {"rows": 15, "examined": 15, "duplicates": 1, "too_long": 1, "empty": 1, "kept": 12}
    ids = [{p["id"] for p in plan.prompts(r)} for r in range(3)]
    assert all(len(s) == 4 for s in ids)
    assert set().union(*ids) == {f"p{i}" for i in range(12)}


def test_pool_too_small_after_cleaning_unless_reuse(tmp_path, tiny_model):
    rows = [{"prompt": f"Prompt {i}"} for i in range(5)] + [{"prompt": "Prompt 1"}]
    path = pool_file(tmp_path, rows)
    dm = SoftDataModule(prompts=path, prompts_per_round=3, rounds=2, val_path=None, tokenizer=tiny_model)
    dm.setup("fit")
    with pytest.raises(ConfigError, match="has 5 usable prompts after dropping"):
        dm.draw_prompts(6)
    dm = SoftDataModule(prompts=path, prompts_per_round=3, rounds=2, val_path=None, tokenizer=tiny_model,
                        allow_prompt_reuse=True)
    dm.setup("fit")
    plan = build_plan({}, draw=dm.draw_prompts, rounds=2, per_round=3, pool_stats=dm.pool_stats)
    assert [len(s) for s in plan.rounds] == [3, 3]
    assert len({p["id"] for s in plan.rounds for p in s}) == 5, "round 1 wraps around the pool"


def test_json_and_parquet_pools_read_like_jsonl(tmp_path, tiny_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"p{i}", "prompt": f"Tell me fact {i}."} for i in range(4)]
    (tmp_path / "pool.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    for name in ("pool.json", "pool.parquet"):
        dm = SoftDataModule(prompts=str(tmp_path / name), prompts_per_round=2, rounds=2, val_path=None,
                            tokenizer=tiny_model)
        dm.setup("fit")
        assert sorted(p["id"] for p in dm.draw_prompts(None)) == [f"p{i}" for i in range(4)]


def test_round_store_checksums_the_data(tmp_path):
    store = RoundStore(tmp_path)
    store.write_round(0, [{"id": "a", "response": "x"}], {"prompts": 1})
    assert store.is_generated(0) and store.read_manifest(0)["round"] == 0
    with open(store.data_path(0), "a") as fh:
        fh.write('{"id": "b"}\n')
    assert not store.is_generated(0), "a data file that no longer matches its manifest must not count"
    assert not list(tmp_path.glob("round_0/.*")), "temp files must not be left behind"


def test_adapter_save_failure_leaves_no_adapter(tmp_path):
    store = RoundStore(tmp_path)

    def broken_save(directory):
        (directory / "adapter_config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.save_adapter(0, broken_save)
    assert not store.adapter_dir(0).exists() and not list((tmp_path / "round_0").iterdir())


def test_a_large_jsonl_pool_is_read_only_as_far_as_the_rounds_need(tmp_path, tiny_model):
    rows = [{"id": f"p{i}", "prompt": f"Prompt number {i}"} for i in range(20_000)]
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    dm = SoftDataModule(prompts=str(path), prompts_per_round=5, rounds=3, val_path=None, tokenizer=tiny_model)
    dm.setup("fit")
    plan = build_plan({}, draw=dm.draw_prompts, rounds=3, per_round=5, pool_stats=dm.pool_stats)
    # 15 rows parsed and cleaned out of 20,001 lines; the broken last line is never needed.
    assert plan.pool == {"rows": 20_001, "examined": 15, "duplicates": 0, "too_long": 0, "empty": 0, "kept": 15}
    again = SoftDataModule(prompts=str(path), prompts_per_round=5, rounds=3, val_path=None, tokenizer=tiny_model)
    again.setup("fit")
    assert build_plan({}, draw=again.draw_prompts, rounds=3, per_round=5, pool_stats=again.pool_stats) == plan
    with pytest.raises(ConfigError, match=r"big.jsonl line 20001: invalid JSON"):
        dm.draw_prompts(None)


def test_line_index_handles_blank_lines_crlf_and_a_last_line_without_newline(tmp_path, tiny_model):
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b'{"prompt": "one"}\r\n\n\n{"prompt": "two"}\n   \n{"prompt": "three"}')
    dm = SoftDataModule(prompts=str(path), prompts_per_round=3, rounds=1, val_path=None, tokenizer=tiny_model)
    dm.setup("fit")
    assert sorted((p["id"], p["prompt"]) for p in dm.draw_prompts(3)) == [
        ("line-1", "one"), ("line-4", "two"), ("line-6", "three")]


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

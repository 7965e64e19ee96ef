"""The prompt pool (pool.py through the DataModule): read lazily from JSONL, JSON or Parquet,
deduplicated, cleaned and split disjointly."""

import json

import pytest

from soft_lightning.rounds.plan import build_plan
from soft_lightning.training.data import SoftDataModule
from soft_lightning.utils.errors import ConfigError
from tests.helpers.files import pool_file


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

"""Scale of the data path: splitting a 1,000,000-prompt pool into rounds and building one round's
training set, in bounded memory and in time that follows the round size, not the pool size.

Writes synthetic JSONL pools (10k, 100k and 1M prompts) once, then measures each case in a fresh
subprocess (so peak RSS is its own): `SoftDataModule(...)` + `setup("fit")` (the split: line
index, seeded shuffle, cleaning the rows the rounds use, the run plan) and `round_data` on a round store of
that round's prompts with synthetic responses (the dataset build). The 10k pool and the
64-prompt round are the baselines the other cases are divided by.

    python bench/pool_scale.py [--rounds 3]

Prints a table and writes bench/results/pool_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TOPICS = ["rivers", "bread", "prime numbers", "bicycles", "tides", "letters", "budgets", "volcanoes", "chess", "tea"]
CASES = [(10_000, 64), (100_000, 64), (1_000_000, 64), (1_000_000, 256), (1_000_000, 1024)]


def write_pool(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            fh.write(json.dumps({"id": f"s{i}", "prompt": f"In {2 + i % 5} sentences, explain one fact about {topic} "
                                                            f"that most people get wrong (variant {i})."}) + "\n")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(pool: str, per_round: int, rounds: int) -> None:
    from soft_lightning.models.source import load_tokenizer, resolve_model
    from soft_lightning.rounds.plan import build_plan
    from soft_lightning.rounds.store import RoundStore
    from soft_lightning.training.data import SoftDataModule

    load_tokenizer(resolve_model("smollm2-135m-instruct"))  # warm the file cache; not part of the split
    base_rss = rss_mb()
    t0 = time.perf_counter()
    store = RoundStore(tempfile.mkdtemp(prefix="pool-scale-"))
    dm = SoftDataModule(prompts=pool, prompts_per_round=per_round, rounds=rounds, val_path=None,
                        tokenizer="smollm2-135m-instruct", out_dir=str(store.root))
    dm.setup("fit")
    plan = build_plan({}, draw=dm.draw_prompts, rounds=rounds, per_round=per_round, pool_stats=dm.pool_stats)
    split = time.perf_counter() - t0
    records = [{"id": p["id"], "prompt": p["prompt"], "response": "A short answer. " * 12, "finish_reason": "stop",
                "kept": True, "position": i} for i, p in enumerate(plan.prompts(0))]
    store.write_round(0, records, {"prompts": len(records)})
    t0 = time.perf_counter()
    data = dm.round_data(0)
    build = time.perf_counter() - t0
    print("RESULT " + json.dumps({"split_seconds": split, "round_build_seconds": build, "peak_rss_mb": rss_mb(),
                                  "rss_before_mb": base_rss, "examined": plan.pool["examined"],
                                  "train_examples": len(data.train) + len(data.heldout)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "soft-pool-scale"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.rounds)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for size, per_round in CASES:
        pool = cache / f"pool_{size}.jsonl"
        if not pool.is_file():
            write_pool(pool, size)
        cmd = [sys.executable, __file__, "--rounds", str(args.rounds), "--child", str(pool), str(per_round)]
        proc = subprocess.run(cmd,
                              cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"case {size}/{per_round} failed:\n{proc.stderr[-3000:]}")
        rows.append({"pool": size, "per_round": per_round, "file_mb": round(pool.stat().st_size / 2**20, 1),
                     **json.loads(lines[-1][len("RESULT "):])})
    base_split = rows[0]["split_seconds"]
    base_build = rows[2]["round_build_seconds"]  # 1M pool, 64-prompt rounds
    print(f"{'pool':>9} {'per round':>9} {'file MB':>8} {'split s':>8} {'x10k':>6} {'build s':>8} {'x64':>6} "
          f"{'peak RSS MB':>11} {'before':>7}")
    for r in rows:
        r["split_vs_10k"] = round(r["split_seconds"] / base_split, 2)
        r["build_vs_64"] = round(r["round_build_seconds"] / base_build, 2) if r["pool"] == 1_000_000 else None
        print(f"{r['pool']:>9} {r['per_round']:>9} {r['file_mb']:>8} {r['split_seconds']:>8.2f} {r['split_vs_10k']:>6} "
              f"{r['round_build_seconds']:>8.3f} {r['build_vs_64'] or '':>6} {r['peak_rss_mb']:>11.0f} "
              f"{r['rss_before_mb']:>7.0f}")
    million = rows[2]
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "rounds": args.rounds, "cases": rows,
        "pool_1m_peak_rss_mb": round(million["peak_rss_mb"], 1),
        "pool_1m_split_seconds": round(million["split_seconds"], 3),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pool_scale.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

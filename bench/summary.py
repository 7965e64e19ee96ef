"""Collect the latest bench/results/*.json into bench/results/summary.json and regenerate the
docs/performance.md's table (between its `<!-- bench:begin -->` and `<!-- bench:end -->` markers).

    python bench/summary.py

Run it after any benchmark script; it measures nothing itself.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing; run `python bench/{name}.py` first.")
    return json.loads(path.read_text())


def where(result: dict) -> str:
    machine = result["machine"]
    return f"{machine.get('device', 'cpu').upper()}, {machine['cpus']} cores"


def main() -> None:
    gen, train, overhead, pool = load("generation"), load("training"), load("round_overhead"), load("pool_scale")
    sync, demo, mc, report = load("adapter_sync"), load("demo_runtime"), load("mc_scoring"), load("report_runtime")
    cells = sync["results"]
    summary = {
        "vllm_merged_adapter_over_base": cells["vllm_merged"]["adapter_over_base"],
        "hf_merged_adapter_over_base": cells["hf_merged"]["adapter_over_base"],
        "hf_adapter_round_vs_before": sync["summary"]["hf_merged_adapter_vs_today"],
        "demo_seconds": demo["results"]["this tree"]["wall_seconds"],
        "demo_speedup": demo["speedup"],
        "mc_scoring_speedup": mc["speedup"],
        "train_ratio_vs_trl": train["ratio_vs_trl"],
        "vllm_sampler_ratio_vs_raw": gen["results"]["vllm"]["ratio"],
        "hf_sampler_ratio_vs_raw": gen["results"]["hf"]["ratio"],
        "round_overhead_fraction": overhead["round_overhead_fraction"],
        "pool_1m_peak_rss_mb": pool["pool_1m_peak_rss_mb"],
        "pool_1m_split_seconds": pool["pool_1m_split_seconds"],
        "report_seconds": report["zero_shot_seconds"],
    }
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    v, h = gen["results"]["vllm"], gen["results"]["hf"]
    ours, trl = train["best"]["ours"], train["best"]["trl"]
    ph = overhead["phases_seconds"]
    cases = {(c["pool"], c["per_round"]): c for c in pool["cases"]}
    small, million, big_round = cases[(10_000, 64)], cases[(1_000_000, 64)], cases[(1_000_000, 1024)]
    ok = lambda met: "met" if met else "**missed**"  # noqa: E731
    before, now = demo["results"]["baseline"], demo["results"]["this tree"]
    rows = [
        "| benchmark | ours | baseline (same run) | ratio | target | where |",
        "|---|---|---|---|---|---|",
        *[f"| adapter round vs base round, {backend} with the adapter merged ({sync['prompts']} demo prompts × "
          f"{sync['max_new_tokens']} tokens) | {c['adapter']['tokens_per_second']} tok/s | "
          f"{c['base']['tokens_per_second']} tok/s | {c['adapter_over_base']} | ≥ 0.9: "
          f"{ok(c['adapter_over_base'] >= 0.9)} | {where(sync)} |"
          for backend, c in (("vLLM", cells["vllm_merged"]), ("hf", cells["hf_merged"]))],
        f"| hf adapter round: merged + shared prefix + token batches vs the sampler before (nf4 + LoRA) | "
        f"{cells['hf_merged']['adapter']['tokens_per_second']} tok/s | "
        f"{cells['hf_today']['adapter']['tokens_per_second']} tok/s | "
        f"{sync['summary']['hf_merged_adapter_vs_today']} | "
        f"≥ 3: {ok(sync['summary']['hf_merged_adapter_vs_today'] >= 3)} | {where(sync)} |",
        f"| vLLM adapter round: merged vs `LoRARequest` (sync {cells['vllm_merged']['adapter']['sync_seconds']} s "
        f"per round) | {cells['vllm_merged']['adapter']['tokens_per_second']} tok/s | "
        f"{cells['vllm_lora']['adapter']['tokens_per_second']} tok/s | "
        f"{sync['summary']['vllm_merged_vs_lora_adapter_round']} | – | {where(sync)} |",
        f"| the demo (`configs/demo.yaml`, after set-up) vs commit {before['commit']} | {now['wall_seconds']} s | "
        f"{before['wall_seconds']} s | {demo['speedup']}× faster | ≤ 180 s: {ok(now['wall_seconds'] <= 180)} | "
        f"{where(demo)} |",
        f"| multiple-choice validation: each question prefilled once vs once per choice ({mc['items']} "
        f"{mc['source']} items) | {mc['results']['shared_prefix']['items_per_second']} items/s | "
        f"{mc['results']['per_choice']['items_per_second']} items/s | {mc['speedup']}× | – | {where(mc)} |",
        f"| generation: our vLLM sampler vs raw `vllm.LLM.generate` ({gen['prompts']} ICL prompts × "
        f"{gen['max_new_tokens']} tokens) | {v['ours_tok_s']} tok/s | {v['raw_tok_s']} tok/s | {v['ratio']} | "
        f"≥ 0.95: {ok(v['ratio'] >= 0.95)} | {where(gen)} |",
        f"| generation: our HF sampler vs raw batched `generate` (same prompts) | {h['ours_tok_s']} tok/s | "
        f"{h['raw_tok_s']} tok/s | {h['ratio']} | ≥ 0.95: {ok(h['ratio'] >= 0.95)} | {where(gen)} |",
        f"| training: our LightningModule vs TRL `SFTTrainer` (one demo round, {train['examples']} pairs, nf4 "
        f"QLoRA r{train['settings']['lora_r']}, batch {train['settings']['batch_size']}, non-pad tokens) | "
        f"{ours['tok_s']:.1f} tok/s, {ours['peak_rss_mb']:.0f} MB | {trl['tok_s']:.1f} tok/s, "
        f"{trl['peak_rss_mb']:.0f} MB | {train['ratio_vs_trl']} | ≥ 1.2: {ok(train['ratio_vs_trl'] >= 1.2)} | "
        f"{where(train)} |",
        f"| round overhead of a {overhead['rounds']}-round demo run (neither generation, scoring, training nor "
        f"validation) | {overhead['overhead_seconds']} s of {overhead['wall_seconds']} s | – | "
        f"{overhead['round_overhead_fraction']:.1%} | ≤ 5%: {ok(overhead['round_overhead_fraction'] <= 0.05)} | "
        f"{where(overhead)} |",
        f"| the same run's fixed costs: start-up {ph['startup']} s, engine start {ph['engine_start']} s (once), "
        f"shutdown {ph['shutdown']} s | {overhead['overhead_with_fixed_costs_fraction']:.1%} with them | – | – | – | "
        f"{where(overhead)} |",
        f"| `report` on a finished {report['models'] - 1}-round demo run, {report['answers']} answers per model: "
        f"the run's zero-shot answers vs answering pool prompts now (`--held_out pool`) | "
        f"{report['zero_shot_seconds']} s | "
        f"{report['pool_seconds']} s | {report['speedup']}× faster | ≤ 30 s: {ok(report['met'])} | {where(report)} |",
        f"| data path: split a 1M-prompt pool ({million['file_mb']} MB JSONL) into {pool['rounds']} rounds of 64 | "
        f"{million['split_seconds']:.2f} s, peak RSS {million['peak_rss_mb']:.0f} MB | 10k pool: "
        f"{small['split_seconds']:.2f} s, {small['peak_rss_mb']:.0f} MB | {million['split_vs_10k']}× time for "
        f"100× pool | bounded | {where(pool)} |",
        f"| data path: one round's dataset build, 1024 vs 64 prompts per round (1M pool) | "
        f"{big_round['round_build_seconds']:.3f} s | {million['round_build_seconds']:.3f} s | "
        f"{big_round['build_vs_64']}× for 16× data | linear in round | {where(pool)} |",
    ]
    table = "\n".join(rows)
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"docs/performance.md lacks the {BEGIN} ... {END} markers around the Performance table.")
    head, rest = text.split(BEGIN, 1)
    README.write_text(f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}")
    print(table)


if __name__ == "__main__":
    main()

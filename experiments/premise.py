"""SOFT's premise on this model: principles + in-context examples make the *base* model keep the
rules more often than the plain prompt does. Greedy answers (96 new tokens at most) to the 100
held-out `rules` prompts (validation + test), once few-shot exactly as round 0 would render them
(3 examples drawn per prompt, seed 0) and once zero-shot in the training chat format; each
prompt's pair is checked by the same rules and compared with an exact McNemar test.

    python experiments/premise.py OUT.json      (run_grid.py calls it as its first step)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soft_lightning.models.formats import PromptFormat  # noqa: E402
from soft_lightning.models.precision import resolve  # noqa: E402
from soft_lightning.models.source import load_tokenizer, resolve_model  # noqa: E402
from soft_lightning.rounds import phases  # noqa: E402
from soft_lightning.rounds.icl import IclSettings, Principles, load_icl_pool  # noqa: E402
from soft_lightning.sampler import Policy, SamplerSettings, SamplingSettings, VLLMOptions, make_sampler  # noqa: E402
from soft_lightning.signals import stats, zero_shot  # noqa: E402
from soft_lightning.signals.adherence import Adherence  # noqa: E402
from soft_lightning.utils.files import write_json_atomic  # noqa: E402

GREEDY = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=96)


def main(out: str) -> None:
    source = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(source)
    fmt, principles = PromptFormat(tokenizer), Principles.load("rules")
    checks = principles.checks
    prompts = [p for split in ("rules", "rules-test") for p in zero_shot.ZeroShot(split).load_prompts()]
    icl = IclSettings(principles="rules", pool="rules", strategy="random", examples=3)
    few = phases.build_requests(prompts, 0, icl, principles.text, fmt, load_icl_pool(icl.pool), seed=0)
    plain = zero_shot.plain_requests(prompts, fmt)
    dtype = resolve("auto", None, "cpu").dtype
    engine = SamplerSettings(backend="vllm", vllm=VLLMOptions(kv_cache_memory_bytes=1_500_000_000, max_model_len=2048))
    sampler = make_sampler(engine, Policy(source, dtype, lora_rank=16), sampling=GREEDY, tokenizer=tokenizer)
    answers = {name: sampler.generate(requests, round_index=0)
               for name, requests in (("few_shot", few), ("zero_shot", plain))}
    sampler.close()
    for records in answers.values():
        for rec, prompt in zip(records, prompts):
            rec["harmful"] = prompt["harmful"]
            rec["checks"] = checks.check(rec["response"], prompt["harmful"], rec["finish_reason"] == "stop")
    rates = {name: Adherence.of(checks, records).rates() for name, records in answers.items()}
    test = stats.paired([r["checks"]["all"] for r in answers["few_shot"]],
                        [r["checks"]["all"] for r in answers["zero_shot"]])
    diffs = [int(a["checks"]["all"]) - int(b["checks"]["all"]) for a, b in zip(*answers.values())]
    write_json_atomic(Path(out), {
        "prompts": len(prompts), "dtype": dtype, "sampling": "greedy, 96 new tokens",
        "few_shot": rates["few_shot"]["all"], "zero_shot": rates["zero_shot"]["all"],
        "per_rule": {name: {rule: r["rate"] for rule, r in rate.items()} for name, rate in rates.items()},
        **test, "difference_ci95": list(stats.bootstrap_interval(diffs)),
        "advantage": rates["few_shot"]["all"]["rate"] > rates["zero_shot"]["all"]["rate"] and test["p"] < 0.05,
        "records": answers,
    })


if __name__ == "__main__":  # vLLM spawns workers: keep the entry point guarded
    main(sys.argv[1])

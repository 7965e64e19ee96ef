"""`export`: a round's adapter merged into the unquantised base as a model folder that plain
transformers and vLLM load, computing what base + adapter computes (within bf16 rounding)."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from soft_lightning.models.source import load_tokenizer
from soft_lightning.sampler import Policy, SamplerSettings, VLLMOptions, make_sampler
from soft_lightning.signals import zero_shot
from soft_lightning.signals.judge import Judge, verdicts
from tests.helpers.cli import ok_here, run_here
from tests.test_adapter_sync import GREEDY, demo_requests

# bf16 keeps 8 bits of mantissa: each exported weight is within 2^-9 of the float32 merge, and the
# log-probabilities of the bf16 model stay within this of base + adapter in float32.
BF16_LOGPROB_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def exported(trained_run):
    result = ok_here("export", str(trained_run), "--round", "best")
    return trained_run, trained_run / "export" / "round_0", result


def log_probs(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float().log_softmax(-1)


@pytest.mark.slow
def test_export_loads_in_transformers_and_computes_base_plus_adapter(exported, tiny_model):
    out, folder, result = exported
    assert "round 0 merged into" in result.stdout
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.bfloat16 and not hasattr(model.config, "quantization_config")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and GenerationConfig.from_pretrained(folder).eos_token_id is not None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Name three rivers in Europe."}],
                                         tokenize=False, add_generation_prompt=True) + "The Danube,"
    ids = tokenizer(text, return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    plain = log_probs(base, ids)
    reference = log_probs(PeftModel.from_pretrained(base, str(folder / "adapter")), ids)
    ours = log_probs(model, ids)
    assert (ours - reference).abs().max() < BF16_LOGPROB_TOLERANCE
    assert (plain - reference).abs().max() > 10 * BF16_LOGPROB_TOLERANCE, "the adapter should matter"
    card = (folder / "README.md").read_text()
    assert "| round | kept |" in card and "SOFT round 0" in card and "```yaml" in card
    warned = "[soft] warning: the best round 0 is aligned on" in out.with_name("cli.stderr").read_text()
    assert ("> **Warning:** round 0 is aligned on" in card) == warned, "the card warns where the run did"
    assert json.loads((folder / "soft_export.json").read_text())["round"] == 0
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()

    refused = run_here("export", str(out))
    assert refused.returncode == 2 and "already exists; pass --overwrite true or another --dest" in refused.stderr
    refused = run_here("export", str(out), "--round", "3", "--dest", str(out / "other"))
    assert refused.returncode == 2 and "'3' is neither `best`, `last` nor a trained round ([0])" in refused.stderr
    assert not (out / "other").exists(), "nothing written for a refused export"


@pytest.mark.slow
def test_export_loads_in_vllm_and_generates_what_transformers_generates(exported):
    """vLLM reads the folder (config, tokenizer, weights) and decodes greedily what transformers
    decodes from it (float32 compute of the same bf16 weights)."""
    _, folder, _ = exported
    tokenizer = load_tokenizer(str(folder))
    requests, policy = demo_requests(tokenizer), Policy(str(folder), "float32", lora_rank=8)
    hf = make_sampler(SamplerSettings(backend="hf", adapter_sync="merged"), policy, sampling=GREEDY,
                      tokenizer=tokenizer).generate(requests, round_index=0)
    engine = SamplerSettings(backend="vllm", adapter_sync="lora", vllm=VLLMOptions(gpu_memory_utilization=0.2))
    sampler = make_sampler(engine, policy, sampling=GREEDY, tokenizer=tokenizer)
    try:
        ours = sampler.generate(requests, round_index=0)
    finally:
        sampler.close()
    assert [r["response"] for r in ours] == [r["response"] for r in hf]
    assert [r["mean_logprob"] for r in ours] == pytest.approx([r["mean_logprob"] for r in hf], abs=1e-3)


@pytest.mark.slow
def test_evaluate_principles_on_a_run_and_on_its_export(exported, tiny_model):
    """`evaluate --tasks principles` answers held-out prompts zero-shot for a run's rounds (into
    the store and its round table) and for an exported folder (into the folder), with every
    quality signal (the base model as judge on the run), and prints the template control's row."""
    import csv
    import io

    out, folder, _ = exported
    result = ok_here("evaluate", str(out), "--tasks", "principles", "--rounds", "base,0", "--limit", "3",
                     "--safety", "null", "--dtype", "float32", "--judge.model", "base")
    assert "round 0 on rules-test: aligned" in result.stdout
    assert "template control on rules-test: aligned" in result.stdout
    evaluated = json.loads((out / "round_0" / "principles_eval.json").read_text())
    assert evaluated["adherence"]["all"]["n"] == 3 and len(evaluated["records"]) == 3
    assert all(set(rec["checks"]) == {"summary", "points", "length", "refusal", "all"} for rec in evaluated["records"])
    assert all({"aligned", "relevant", "refusal", "correct"} <= set(rec["signals"]) for rec in evaluated["records"])
    assert (out / "base_principles_eval.json").is_file()
    template = json.loads((out / "template_principles_eval.json").read_text())["records"]  # each control answer kept
    assert len(template) == 3 and not any(rec["signals"]["aligned"] for rec in template), "a constant answer is not"
    table = list(csv.DictReader(io.StringIO((out / "rounds.csv").read_text())))
    assert float(table[0]["eval/adherence"]) == evaluated["adherence"]["all"]["rate"]
    assert float(table[0]["eval/aligned"]) == evaluated["quality"]["aligned"]["rate"]
    base_judge = zero_shot.scoring_forward(tiny_model, "float32", "cpu", 4)  # the adapter is not the judge's
    assert [rec["judge"] for rec in evaluated["records"]] == pytest.approx(
        verdicts(evaluated["records"], Judge(model="base"), base_judge), abs=1e-3)
    assert all(isinstance(rec["judge"], float) for rec in template)
    assert float(table[0]["eval/judged"]) == evaluated["quality"]["judged"]["rate"]

    ok_here("evaluate", str(folder), "--tasks", "principles", "--prompts", "rules", "--limit", "2", "--safety", "null")
    unjudged = json.loads((folder / "principles_eval.json").read_text())
    assert unjudged["adherence"]["all"]["n"] == 2 and unjudged["quality"]["judged"]["n"] == 0
    # Principles without rule checks: every other signal, no rules.
    plain = ok_here("evaluate", str(folder), "--tasks", "principles", "--principles", "default", "--limit", "2",
                    "--safety", "null")
    assert "aligned" in plain.stdout and "; rules " not in plain.stdout
    assert "adherence" not in json.loads((folder / "principles_eval.json").read_text())

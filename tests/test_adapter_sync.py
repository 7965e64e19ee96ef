"""The round's adapter merged into full-precision base weights generates what the adapter on top of
the base generates; the shared-prefix KV cache changes nothing; the merge is exact and undone
exactly. Greedy decoding in float32 on the real demo model, where the comparison is exact (in
bf16, rounding decides near-ties, so greedy tokens may part ways after a while: see docs)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from soft_lightning.jsonl import read_records
from soft_lightning.merge import AdapterMerger
from soft_lightning.models import load_tokenizer
from soft_lightning.module import SoftModule
from soft_lightning.prompts import PromptFormat, asset_path, draw_examples, load_icl_pool, load_principles
from soft_lightning.sampler import GenerationRequest, SamplingConfig, VLLMOptions
from soft_lightning.sampler.hf import GenerationCopy, HFSampler
from tests.helpers.sampling import sample

GREEDY = SamplingConfig(temperature=0, max_new_tokens=24)


def random_adapter(source: str, target: Path, dtype: str = "float32", scale: float = 0.02) -> SoftModule:
    """A LoRA adapter with random (non-zero) B, saved to `target`; returns the module holding it."""
    module = SoftModule(source, quantization="none", compute_dtype=dtype, lora_r=8)
    module.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)
    module.save_adapter(target)
    return module


def demo_requests(tokenizer, n: int = 4) -> list[GenerationRequest]:
    fmt, principles, pool = PromptFormat(tokenizer), load_principles(None), load_icl_pool(None)
    rows = read_records(asset_path("demo_prompts.jsonl"), key="test", required={"prompt": str})[:n]
    requests = []
    for row in rows:
        examples = draw_examples(pool, 3, seed=0, round_index=1, prompt_id=row["id"])
        text = fmt.generation_prompt(principles, examples, row["prompt"])
        requests.append(GenerationRequest(row["id"], row["prompt"], text, [e.id for e in examples]))
    return requests


def test_merge_is_exact_and_undone_exactly(tiny_model, tmp_path):
    random_adapter(tiny_model, tmp_path / "adapter", scale=0.5)
    lora = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    merger = AdapterMerger(tiny_model)
    merged = dict(merger.changes(tmp_path / "adapter"))
    assert len(merged) == 14, "every linear layer of the tiny Llama is adapted"
    name = "model.layers.1.self_attn.q_proj.weight"
    a = lora["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].float()
    b = lora["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"].float()
    assert torch.equal(merged[name], merger.base_weight(name).float() + (b @ a) * (16 / 8))
    # peft's alpha_pattern: regex keys matched against the module name's suffix.
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "alpha_pattern": {"q_proj": 32}}))
    patterned = dict(merger.changes(tmp_path / "adapter"))
    assert torch.equal(patterned[name], merger.base_weight(name).float() + (b @ a) * (32 / 8))
    k_name = "model.layers.1.self_attn.k_proj.weight"
    assert torch.equal(patterned[k_name], merged[k_name]), "modules the pattern does not match keep lora_alpha"
    restored = dict(merger.changes(None))
    assert restored.keys() == merged.keys() and all(torch.equal(restored[k], merger.base_weight(k)) for k in restored)
    assert dict(merger.changes(None)) == {}, "nothing to undo twice"


@pytest.fixture(scope="module")
def adapted(smollm2_dir, tmp_path_factory):
    """SmolLM2 in float32 with a random adapter (unmerged, peft), the adapter's folder, requests."""
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    module = random_adapter(smollm2_dir, folder)
    tokenizer = load_tokenizer(smollm2_dir)
    return module.model.eval(), folder, tokenizer, demo_requests(tokenizer)


@pytest.mark.slow
def test_hf_merged_generates_what_the_lora_generates(adapted, smollm2_dir):
    model, folder, tokenizer, requests = adapted
    stop = PromptFormat(tokenizer).stop_strings()
    lora = sample(HFSampler(GREEDY, stop, 0, tokenizer), requests, 1, folder, model)
    copy = GenerationCopy(smollm2_dir, "float32")
    merged = sample(HFSampler(GREEDY, stop, 0, tokenizer, copy=copy), requests, 1, folder)
    assert [r["response"] for r in merged] == [r["response"] for r in lora]
    assert [r["mean_logprob"] for r in merged] == pytest.approx([r["mean_logprob"] for r in lora], abs=1e-3)
    base = sample(HFSampler(GREEDY, stop, 0, tokenizer, copy=copy), requests, 0)
    assert [r["response"] for r in base] != [r["response"] for r in merged], "the adapter should matter"


@pytest.mark.slow
def test_the_shared_prefix_cache_changes_nothing(adapted):
    """HFSampler (principles' KV cache computed once, [prefix][pad][own tokens] batches) against
    plain left-padded `generate` of each prompt on its own."""
    model, folder, tokenizer, requests = adapted
    stop = PromptFormat(tokenizer).stop_strings()
    ours = sample(HFSampler(GREEDY, stop, 0, tokenizer), requests, 1, None, model)
    for request, got in zip(requests, ours):
        ids = tokenizer(request.text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, max_new_tokens=GREEDY.max_new_tokens,
                                 eos_token_id=tokenizer.convert_tokens_to_ids(stop[0]),
                                 pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert got["response"] == text.split(stop[0])[0].strip()


@pytest.mark.slow
def test_vllm_merged_generates_what_the_lora_request_generates(adapted, smollm2_dir):
    from soft_lightning.sampler.vllm import VLLMSampler

    _, folder, tokenizer, requests = adapted
    stop = PromptFormat(tokenizer).stop_strings()
    results = {}
    for sync in ("lora", "merged"):
        sampler = VLLMSampler(GREEDY, stop, 0, smollm2_dir, 8, VLLMOptions(gpu_memory_utilization=0.2, dtype="float32"),
                              adapter_sync=sync)
        try:
            base = sample(sampler, requests, 0)
            results[sync] = sample(sampler, requests, 1, folder)
            again = sample(sampler, requests, 2)
        finally:
            sampler.close()
        assert [r["response"] for r in again] == [r["response"] for r in base], "back to the base exactly"
    assert [r["response"] for r in results["merged"]] == [r["response"] for r in results["lora"]]
    assert [r["mean_logprob"] for r in results["merged"]] == pytest.approx(
        [r["mean_logprob"] for r in results["lora"]], abs=1e-3)

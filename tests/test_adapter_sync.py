"""The round's adapter merged into full-precision base weights generates what the adapter on top of
the base generates; the shared-prefix KV cache changes nothing; the merge is exact and undone
exactly. Greedy decoding in float32 on the real demo model, where the comparison is exact (in
bf16, rounding decides near-ties, so greedy tokens may part ways after a while: see docs)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from soft_lightning.models.formats import PromptFormat
from soft_lightning.models.merge import AdapterMerger
from soft_lightning.models.source import load_tokenizer
from soft_lightning.sampler import (
    GenerationRequest,
    Policy,
    SamplerSettings,
    SamplingSettings,
    VLLMOptions,
    make_sampler,
)
from soft_lightning.training.module import SoftModule
from soft_lightning.utils.assets import asset_path
from soft_lightning.utils.files import read_records
from tests.helpers.sampling import few_shot_requests, sample

GREEDY = SamplingSettings(temperature=0, max_new_tokens=24)


def hf(source: str, tokenizer, sync: str):
    """The hf backend in float32: `lora` samples from the model it is handed, `merged` from a copy."""
    return make_sampler(SamplerSettings(backend="hf", adapter_sync=sync), Policy(source, "float32"), sampling=GREEDY,
                        tokenizer=tokenizer)


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


def demo_requests(tokenizer, n: int = 2) -> list[GenerationRequest]:
    """Round 1's requests for the first demo prompts: the principles (480 tokens, shared) and one
    example each, ~650 tokens; two of them, of different lengths, make a padded batch. (The
    prefill is most of these tests' time: three examples a request made ~1000 tokens and a call
    took 40 s on an AVX2 Zen 1 EPYC; three requests of one example, 13 s.)"""
    rows = read_records(asset_path("demo_prompts.jsonl"), key="test", required={"prompt": str})[:n]
    return few_shot_requests(tokenizer, [{"id": row["id"], "prompt": row["prompt"]} for row in rows], round_index=1,
                             examples=1)


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
    lora = sample(hf(smollm2_dir, tokenizer, "lora"), requests, 1, folder, model)
    merging = hf(smollm2_dir, tokenizer, "merged")
    merged = sample(merging, requests, 1, folder)
    assert [r["response"] for r in merged] == [r["response"] for r in lora]
    assert [r["mean_logprob"] for r in merged] == pytest.approx([r["mean_logprob"] for r in lora], abs=1e-3)
    base = sample(merging, requests, 0)
    assert [r["response"] for r in base] != [r["response"] for r in merged], "the adapter should matter"


@pytest.mark.slow
def test_the_shared_prefix_cache_changes_nothing(adapted, smollm2_dir):
    """HFSampler (principles' KV cache computed once, [prefix][pad][own tokens] batches) against
    plain left-padded `generate` of each prompt on its own."""
    model, folder, tokenizer, requests = adapted
    stop = PromptFormat(tokenizer).stop_strings()
    ours = sample(hf(smollm2_dir, tokenizer, "lora"), requests, 1, None, model)
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
    _, folder, tokenizer, requests = adapted
    results = {}
    for sync in ("lora", "merged"):
        engine = SamplerSettings(backend="vllm", adapter_sync=sync, vllm=VLLMOptions(gpu_memory_utilization=0.2))
        sampler = make_sampler(engine, Policy(smollm2_dir, "float32", lora_rank=8), sampling=GREEDY,
                               tokenizer=tokenizer)
        try:
            base = sample(sampler, requests, 0)
            results[sync] = sample(sampler, requests, 1, folder)
            again = sample(sampler, requests, 2)
            if sync == "merged":
                # The way to workers in processes of their own (tensor parallelism on one rank):
                # through safetensors shards on disk, which the engine reloads from its folder. Here
                # in-process, shards of at most 64 MB (a larger tensor alone): 8 files for SmolLM2's
                # 0.54 GB in float32.
                sampler.through_disk, sampler.merged_shard_bytes = True, 64 * 2**20
                on_disk = sample(sampler, requests, 3, folder)
                assert len(list(sampler._merged_dir.glob("*.safetensors"))) == 8
                back = sample(sampler, requests, 4)
        finally:
            sampler.close()
        assert [r["response"] for r in again] == [r["response"] for r in base], "back to the base exactly"
    assert [(r["response"], r["mean_logprob"]) for r in on_disk] == \
        [(r["response"], r["mean_logprob"]) for r in results["merged"]], "the same weights through disk"
    assert [r["response"] for r in back] == [r["response"] for r in base]
    assert [r["response"] for r in results["merged"]] == [r["response"] for r in results["lora"]]
    assert [r["mean_logprob"] for r in results["merged"]] == pytest.approx(
        [r["mean_logprob"] for r in results["lora"]], abs=1e-3)

"""The sampler package: the spawned sampler process (`bootstrap.sampler_process: spawn`), the
factory and `bootstrap.sampler: auto`, and the checks of what a run can honour.

Real child processes on the tiny random Llama; nothing is mocked.
"""

import multiprocessing
import os
import signal
import time
from dataclasses import replace
from functools import partial

import pytest
import torch

from soft_lightning.callbacks.bootstrap import BootstrapCallback
from soft_lightning.models.encoding import Encoder
from soft_lightning.models.source import load_tokenizer
from soft_lightning.sampler import (
    GenerationRequest,
    Policy,
    SamplerSettings,
    SamplingSettings,
    VLLMOptions,
    check_sampler_for_run,
    make_sampler,
    resolve_backend,
)
from soft_lightning.sampler.hf import HFSampler
from soft_lightning.sampler.process import SamplerProcess, SamplerProcessError
from soft_lightning.training.module import SoftModule
from soft_lightning.utils.errors import ConfigError
from tests.helpers.sampling import few_shot_requests, sample

SAMPLING = SamplingSettings(temperature=0.9, top_p=0.95, max_new_tokens=12)
GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=12)
PROMPTS = ["Name a primary colour.", "How do plants make food?", "Write a haiku about rain."]


def requests_for(tokenizer) -> list[GenerationRequest]:
    return few_shot_requests(tokenizer, [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)], examples=2)


def hf_process(hparams: dict, tokenizer, dtype: str | None = "bfloat16") -> SamplerProcess:
    """A spawned hf sampler that rebuilds the training policy (the adapter as LoRA), as a run's does."""
    policy = Policy(hparams["model_name_or_path"], load=partial(SoftModule.policy_for_sampling, hparams, dtype),
                    cast=dtype)
    return make_sampler(SamplerSettings(backend="hf", process="spawn", adapter_sync="lora", hf_batch_tokens=1024),
                        policy, sampling=SAMPLING, tokenizer=tokenizer)



def training_model(tiny_model) -> SoftModule:
    """The model as training holds it: nf4 base with a LoRA (float32 compute, so the comparison
    below does not hang on bf16 summation order, which thread counts may change)."""
    module = SoftModule(tiny_model, quantization="nf4", compute_dtype="float32", lora_r=8)
    module.configure_model()
    return module


@pytest.mark.slow
def test_spawned_hf_sampler_matches_in_process(tiny_model, tmp_path):
    """Same weights, same greedy records: text, token count and mean log-probability, exactly.

    The child builds the model the way the training process does, from the module's hparams,
    and loads the adapter saved from the in-memory one. Round 0 (no adapter: a fresh LoRA whose
    zero B leaves the base's outputs) and round 1 (random LoRA B, as if trained) go through one
    child; the in-process model generates both, its adapter saved in between. The random model's
    logits are nearly flat, so any difference in the weights shows: this is how a process-wide
    bitsandbytes cache was found that made the 4-bit base depend on what the process had loaded
    before (`float32_default_dtype` in module.py).
    """
    tokenizer = load_tokenizer(tiny_model)
    requests = requests_for(tokenizer)
    inline = make_sampler(SamplerSettings(backend="hf", adapter_sync="lora", hf_batch_tokens=1024),
                          Policy(tiny_model), sampling=SAMPLING, tokenizer=tokenizer)
    module = training_model(tiny_model)
    expected = [sample(inline, requests, 0, None, module.model, sampling=GREEDY)]
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = tmp_path / "round_0" / "adapter"
    module.save_adapter(adapter)
    expected.append(sample(inline, requests, 1, adapter, module.model, sampling=GREEDY))
    assert expected[0] != expected[1], "the adapter should change what is generated"

    spawned = hf_process(dict(module.hparams), tokenizer, dtype=None)
    try:
        got = [sample(spawned, requests, 0, sampling=GREEDY), sample(spawned, requests, 1, adapter, sampling=GREEDY)]
        described = spawned.describe()
    finally:
        spawned.close()
    keys = ("response", "n_tokens", "mean_logprob")
    for want, have in zip(expected, got):
        assert [[r[k] for k in keys] for r in have] == [[r[k] for k in keys] for r in want]
    assert described["backend"] == "hf" and described["process"] == "spawn" and described["dtype"] is None


@pytest.mark.slow
def test_child_error_is_clear_and_close_leaves_no_child(tiny_model, tmp_path):
    tokenizer = load_tokenizer(tiny_model)
    hparams = dict(SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8).hparams)
    spawned = hf_process(hparams, tokenizer, dtype=None)
    try:
        with pytest.raises(SamplerProcessError, match=r"^the hf sampler process failed in generate: "
                                                      r"ConfigError: model\.adapter: .*nope is not a PEFT"):
            sample(spawned, requests_for(tokenizer)[:1], 1, tmp_path / "nope")
        child = spawned._proc
        assert child.is_alive(), "a failed call should leave the child serving"
    finally:
        spawned.close()
    assert not child.is_alive() and child.exitcode is not None
    assert child not in multiprocessing.active_children() and spawned.pid is None


@pytest.mark.slow
def test_killed_child_raises_instead_of_hanging(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    hparams = dict(SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8).hparams)
    spawned = hf_process(hparams, tokenizer, dtype=None)
    try:
        spawned.start()
        os.kill(spawned.pid, signal.SIGKILL)
        t0 = time.perf_counter()
        with pytest.raises(SamplerProcessError, match=r"^the hf sampler process died \(exit code -9\) before "
                                                      r"answering sync_weights"):
            sample(spawned, requests_for(tokenizer)[:1], 0)
        assert time.perf_counter() - t0 < 10
        assert spawned.pid is None and not multiprocessing.active_children()
    finally:
        spawned.close()


def test_auto_picks_vllm_when_installed_and_merges_the_adapter_on_cpu(tiny_model):
    import importlib.util

    assert resolve_backend("auto") == ("vllm" if importlib.util.find_spec("vllm") else "hf")
    encoder = Encoder.load(tiny_model)
    module = SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8)
    module.configure_model()
    sampler = make_sampler(SamplerSettings(backend="hf", hf_batch_tokens=1024), module.policy(), sampling=SAMPLING,
                           tokenizer=encoder.tokenizer, stop=encoder.format.stop_strings())
    assert isinstance(sampler, HFSampler) and sampler.describe()["backend"] == "hf"
    if not torch.cuda.is_available():
        assert sampler.describe()["adapter_sync"] == "merged", "auto merges on CPU"
    with pytest.raises(ConfigError, match=r"bootstrap\.sampler\.vllm\.sleep_between_rounds=true does nothing with "
                                          r"bootstrap\.sampler\.process=spawn"):
        BootstrapCallback(sampler=SamplerSettings(backend="auto", process="spawn",
                                                  vllm=VLLMOptions(sleep_between_rounds=True)))


def test_sampler_settings_the_run_cannot_honour_are_refused():
    def settings(backend, process, tp=1):
        return SamplerSettings(backend=backend, process=process, vllm=VLLMOptions(tensor_parallel_size=tp))

    with pytest.raises(ConfigError, match=r"tensor_parallel_size=3 must divide the run's 2 ranks"):
        check_sampler_for_run(settings("vllm", "inline", 3), 8, 2, False)
    with pytest.raises(ConfigError, match=r"needs bootstrap\.sampler\.process=inline"):
        check_sampler_for_run(settings("vllm", "spawn", 2), 8, 2, False)
    with pytest.raises(ConfigError, match=r"cannot generate from FSDP-sharded weights on several ranks"):
        check_sampler_for_run(settings("hf", "inline"), 8, 2, True)
    check_sampler_for_run(settings("hf", "spawn"), 8, 2, True)
    check_sampler_for_run(settings("vllm", "inline", 2), 8, 4, False)


def test_spawned_samplers_take_their_rank_s_gpu_from_the_parent_s_visible_list(tiny_model, monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=4,5 (a scheduler's share of a node), rank 1 trains on cuda:1,
    which is physical GPU 5: its spawned sampler, vLLM or hf, must see GPU 5 alone and open it as
    cuda:0 (bitsandbytes quantises on the current device, which is cuda:0 in a child that sees one).
    Faked on CPU: the mapping, the child's arguments, and the variable a real child receives."""
    from soft_lightning.sampler.process import rank_devices
    from tests.helpers.sampling import DeviceProbe

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert [rank_devices("cuda:0"), rank_devices("cuda:1")] == ["4", "5"]
    assert rank_devices("cuda:1", parent="") == "1", "no list: the index is the machine's"
    with pytest.raises(SamplerProcessError, match="cuda:2 is not among the 2 devices of CUDA_VISIBLE_DEVICES=4,5"):
        rank_devices("cuda:2")
    policy = Policy(tiny_model, dtype="float32", device="cuda:1", lora_rank=8,
                    load=partial(SoftModule.policy_for_sampling, {}, None))
    for backend, sync in (("hf", "merged"), ("hf", "lora"), ("vllm", "merged")):
        settings = SamplerSettings(backend=backend, process="spawn", adapter_sync=sync)
        spawned = make_sampler(settings, policy, sampling=SAMPLING, ranks=(1, 1, 2))
        assert spawned.visible_devices == "5", (backend, sync)
        device = spawned.kwargs["copy"].device if "copy" in spawned.kwargs else spawned.kwargs.get("device", "cuda:0")
        assert device == "cuda:0", (backend, sync)
        inline = make_sampler(replace(settings, process="inline"), policy, sampling=SAMPLING, ranks=(1, 1, 2))
        if backend == "vllm":
            assert inline.local_rank == 1 and inline.seed == 1, "vLLM's own device (LOCAL_RANK) and the rank's seed"
    assert make_sampler(SamplerSettings(backend="hf", process="spawn", adapter_sync="merged"),
                        replace(policy, device="cpu"), sampling=SAMPLING, ranks=(1, 1, 2)).visible_devices is None
    child = SamplerProcess(DeviceProbe, {"device": "cuda:0"}, visible_devices=rank_devices("cuda:1"))
    try:
        assert child.describe()["CUDA_VISIBLE_DEVICES"] == "5", "the child process sees the rank's GPU alone"
    finally:
        child.close()


def test_sleep_mode_is_refused_when_the_node_cannot_park_every_rank_s_weights():
    """Sleep mode parks each engine's weights in pinned host memory: at 7B in bf16 (13.5 GB) 8
    ranks of a node need 108 GB of it. (The numbers a GPU node would give; sleep mode itself needs
    CUDA, so only the check runs here.)"""
    from soft_lightning.sampler.vllm import check_sleep_host_memory

    seven_b = 13_500_000_000
    check_sleep_host_memory(seven_b, 8, available=200 * 10**9)
    check_sleep_host_memory(None, 8, available=0)  # a hub id: the size is not known before loading
    with pytest.raises(ConfigError, match=r"8 rank\(s\) on this node x 13.5 GB = 108.0 GB, but 64.0 GB is available"):
        check_sleep_host_memory(seven_b, 8, available=64 * 10**9)

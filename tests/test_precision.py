"""`compute_dtype: auto` picks the run's numbers from the device, in one place (precision.py);
explicit values win; pairs that corrupt weights are refused."""

from pathlib import Path

import pytest
import torch

from soft_lightning.models import precision
from soft_lightning.models.precision import resolve
from soft_lightning.utils.errors import ConfigError


@pytest.mark.parametrize(("device", "hardware", "model_type", "dtype", "trainer_precision"), [
    ("cuda", {"cuda_capability": (9, 0)}, None, "bfloat16", "bf16-true"),  # H100
    ("cuda", {"cuda_capability": (8, 0)}, None, "bfloat16", "bf16-true"),  # A100
    ("cuda", {"cuda_capability": (7, 5)}, "llama", "float16", "16-mixed"),  # T4
    ("cuda", {"cuda_capability": (7, 0)}, "gemma2", "float32", "32-true"),  # V100, a model that overflows in fp16
    ("cpu", {"cpu_bf16": True, "capability": "AVX512"}, None, "bfloat16", "bf16-true"),  # AVX512-BF16 / AMX
    ("cpu", {"cpu_bf16": False, "capability": "AVX2"}, None, "float32", "32-true"),  # Zen 3, most laptops
])
def test_auto_resolves_per_device_kind(device, hardware, model_type, dtype, trainer_precision):
    numerics = resolve("auto", None, device, model_type=model_type, **hardware)
    assert (numerics.dtype, numerics.trainer_precision) == (dtype, trainer_precision)
    assert numerics.reason.startswith(f"compute_dtype auto -> {dtype}: ")


def test_auto_on_this_machine_follows_the_kernels_torch_dispatches():
    """Checked against the CPU's own flags: bf16 only where torch runs AVX-512 kernels on a CPU
    with AVX512-BF16 or AMX (an `ATEN_CPU_CAPABILITY=avx2` run counts as AVX2)."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    x86_native = capability.startswith("AVX512") and bool(flags & {"avx512_bf16", "amx_bf16"})
    expected = "bfloat16" if (x86_native or "bf16" in flags) else "float32"
    numerics = resolve("auto", None, "cpu")
    assert numerics.dtype == expected, (capability, sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"}))
    assert numerics.capability == capability and capability in numerics.reason


@pytest.mark.parametrize(("compute_dtype", "trainer_precision", "dtype"), [
    ("float32", None, "float32"),  # explicit compute dtype, trainer precision follows
    ("auto", "bf16-true", "bfloat16"),  # explicit trainer precision, compute dtype follows
    ("auto", "32-true", "float32"),
    ("bfloat16", "bf16-mixed", "bfloat16"),
])
def test_an_explicit_value_wins(compute_dtype, trainer_precision, dtype):
    numerics = resolve(compute_dtype, trainer_precision, "cpu", cpu_bf16=True, capability="AVX512")
    assert numerics.dtype == dtype


@pytest.mark.parametrize(("compute_dtype", "trainer_precision"), [
    ("float16", "bf16-true"),  # Lightning casts the packed 4-bit storage numerically
    ("bfloat16", "16-true"),
    ("float32", "bf16-true"),
])
def test_corrupting_pairs_are_refused_naming_both_keys(compute_dtype, trainer_precision):
    with pytest.raises(ConfigError, match=rf"model.compute_dtype={compute_dtype} with trainer.precision="
                                          rf"{trainer_precision}: .* set model.compute_dtype to"):
        resolve(compute_dtype, trainer_precision, "cpu")


def test_commands_on_a_finished_run_resolve_auto_like_a_run():
    dtype, device = precision.command_numerics("auto", "auto")
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert dtype == resolve("auto", None, "cuda" if device == "cuda" else "cpu").dtype
    assert precision.command_numerics("float16", "cpu") == ("float16", "cpu")


def test_bf16_true_keeps_rope_in_float32_as_the_generation_copies_do(tiny_model):
    """Lightning's `bf16-true` casts the module (`.to(bfloat16)`); the rotary frequencies, which
    define the function and not the weights, stay float32 there as they do in the merged
    generation copy and in a spawned sampler's rebuilt policy (and in vLLM): one policy in
    training and generation. The rounding they are kept from is real on this model."""
    from lightning.pytorch.plugins.precision import HalfPrecision

    from soft_lightning.sampler.hf import GenerationCopy
    from soft_lightning.training.module import SoftModule

    module = SoftModule(tiny_model, quantization="none", compute_dtype="bfloat16", lora_r=8)
    module.configure_model()
    rope = {name.removeprefix("base_model.model."): buf.clone() for name, buf in module.model.named_buffers()
            if "inv_freq" in name}
    assert rope and all(buf.dtype == torch.float32 for buf in rope.values())
    assert any(not torch.equal(buf.to(torch.bfloat16).float(), buf) for buf in rope.values()), "bf16 would round them"
    HalfPrecision("bf16-true").convert_module(module)  # what Lightning does to the module at fit start
    assert next(p for p in module.parameters() if p.requires_grad).dtype == torch.bfloat16, "the weights were cast"
    trained = {name.removeprefix("base_model.model."): buf for name, buf in module.model.named_buffers()}
    merged_copy = dict(GenerationCopy(tiny_model, "bfloat16").model_for(None).named_buffers())
    rebuilt = SoftModule.policy_for_sampling(dict(module.hparams), "bfloat16", adapter=None, device="cpu")
    spawned = {name.removeprefix("base_model.model."): buf for name, buf in rebuilt.named_buffers()}
    for name, want in rope.items():
        for where, buffers in (("training", trained), ("the merged copy", merged_copy), ("a spawned sampler", spawned)):
            assert buffers[name].dtype == torch.float32 and torch.equal(buffers[name], want), f"{where}: {name}"

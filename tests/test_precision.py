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

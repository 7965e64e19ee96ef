"""The one place that turns `model.compute_dtype: auto` into numeric types for the device at hand.

One dtype serves the whole run: Lightning's training precision (LoRA weights and activations), the
4-bit layers' compute dtype, the unquantised base, the hf generation copy, vLLM's weights, and
scoring. `auto` picks it from the device:

- CUDA with bf16 (compute capability >= 8.0: Ampere, Hopper, ...) -> bfloat16, `bf16-true`.
- Older CUDA (T4, V100) -> float16 with loss scaling (`16-mixed`: float32 LoRA weights, fp16
  matmuls), as QLoRA runs on those cards; float32 for model families that overflow in fp16.
- A CPU with native bf16 (AVX512-BF16 or AMX on x86, the BF16 extension on ARM), as long as torch
  dispatches its AVX-512 kernels there -> bfloat16.
- Any other CPU -> float32: without native bf16 a bf16 matmul is emulated, measured 100x slower
  than float32 on an AVX2 EPYC (1.1 against 120 GFLOP/s, 512x576 @ 576x1536, 2 threads).

An explicit value wins; combinations that would silently corrupt weights are refused.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from soft_lightning.utils.errors import ConfigError

ComputeDtype = Literal["auto", "bfloat16", "float16", "float32"]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Lightning's precision for each dtype when `trainer.precision` is left to us.
TRAINER_PRECISION = {"bfloat16": "bf16-true", "float16": "16-mixed", "float32": "32-true"}
# Model families known to overflow in float16 activations (trained in bf16, large activations).
FP16_UNSAFE = ("gemma", "gemma2", "gemma3", "gemma3_text", "t5", "mt5", "umt5")


@dataclass(frozen=True)
class Numerics:
    """What a run computes in, and why."""

    dtype: str  # bfloat16 | float16 | float32
    trainer_precision: str  # Lightning's `trainer.precision`
    reason: str  # one sentence: what was chosen from what
    device: str  # cpu | cuda
    capability: str  # torch's CPU capability, or the CUDA compute capability

    def record(self, model, sampler: dict) -> dict:
        """For a round's manifest: the choice, and the dtypes actually in use (trainable weights,
        the sampler's weights; None there: it samples from the training model)."""
        trainable = next((p.dtype for p in model.parameters() if p.requires_grad), None)
        return {**asdict(self), "trainable_dtype": str(trainable).removeprefix("torch.") if trainable else None,
                "sampler_dtype": sampler.get("dtype")}


def float32_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the buffers the model's own code keeps in float32 whatever dtype it loads in
    (RoPE's inverse frequencies, for one): they define the function, not the weights, and vLLM and
    a fresh `from_pretrained` keep them in float32. A `-true` precision casts them with the weights
    (to bf16: up to 2^-8 relative error in every rotary frequency), so they are put back after."""
    return {name: buf.detach().clone().cpu() for name, buf in model.named_buffers() if buf.dtype == torch.float32}


def restore_float32_buffers(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back the float32 buffers `float32_buffers` copied, on the device each is on now."""
    for name, value in saved.items():
        current = model.get_buffer(name)
        if current.dtype != torch.float32:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, value.to(current.device))


def precision_dtype(trainer_precision: str | int | None) -> str | None:
    """The dtype a Lightning precision setting computes in (None: not set)."""
    if trainer_precision is None:
        return None
    value = str(trainer_precision)
    if value.startswith("bf16"):
        return "bfloat16"
    if value.startswith("16"):
        return "float16"
    if value.startswith(("32", "64")):
        return "float32"
    return None  # transformer-engine, 4-bit/8-bit plugins...: not ours to judge


def cpu_capability() -> str:
    """torch's CPU kernel level (AVX2, AVX512, ...), as `ATEN_CPU_CAPABILITY` may have lowered it."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_native_bf16(capability: str | None = None) -> bool:
    """Whether bf16 matmuls run natively on this CPU with the kernels torch dispatches."""
    capability = cpu_capability() if capability is None else capability
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        if not capability.startswith("AVX512"):  # AVX2 kernels (hardware or ATEN_CPU_CAPABILITY) emulate bf16
            return False
        return _cpu_flags() & {"avx512_bf16", "amx_bf16"} != set()
    if machine in ("aarch64", "arm64"):
        return _arm_has_bf16()
    return False


def _cpu_flags() -> set[str]:
    """The x86 CPU's feature flags as the kernel lists them (empty where /proc/cpuinfo is absent)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    line = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _arm_has_bf16() -> bool:
    if platform.system() == "Darwin":
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        return out.stdout.strip() == "1"
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and any(
        line.startswith("Features") and "bf16" in line.split() for line in cpuinfo.read_text().splitlines()
    )


def device_of(accelerator: str | None) -> str:
    """`cuda` when Lightning's `trainer.accelerator` will put the run on a CUDA GPU, else `cpu`."""
    accelerator = str(accelerator or "auto").lower()
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def command_numerics(dtype: str, device: str) -> tuple[str, str]:
    """(dtype, device) for the commands on a finished run (evaluate, report): `auto` device is the
    GPU where there is one, `auto` dtype is what a run on that device would pick."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = auto_dtype("cuda" if device.startswith("cuda") else "cpu")[0]
    return dtype, device


def auto_dtype(device: str, model_type: str | None = None, *, cuda_capability: tuple[int, int] | None = None,
               cpu_bf16: bool | None = None, capability: str | None = None) -> tuple[str, str, str]:
    """(dtype, why, capability) that `auto` picks on `device`. The keyword arguments stand in for
    the hardware in tests."""
    if device == "cuda":
        major, minor = cuda_capability or torch.cuda.get_device_capability()
        cap = f"sm_{major}{minor}"
        if major >= 8:
            return "bfloat16", f"CUDA {cap} has native bf16", cap
        if model_type in FP16_UNSAFE:
            return "float32", f"CUDA {cap} has no bf16 and {model_type} models overflow in float16", cap
        return "float16", f"CUDA {cap} has no bf16: float16 with loss scaling, as QLoRA on T4/V100", cap
    capability = cpu_capability() if capability is None else capability
    native = cpu_has_native_bf16(capability) if cpu_bf16 is None else cpu_bf16
    if native:
        return "bfloat16", f"this CPU has native bf16 (torch kernels: {capability})", capability
    return "float32", (f"this CPU has no native bf16 (torch kernels: {capability}), where a bf16 matmul runs "
                       "~50-100x slower than float32"), capability


def resolve(compute_dtype: str, trainer_precision: str | int | None, device: str, *, quantized: bool = True,
            model_type: str | None = None, **hardware) -> Numerics:
    """The run's numerics from `model.compute_dtype`, `trainer.precision` (None: unset) and the
    device; refuses combinations that corrupt weights, before anything loads."""
    auto, why, capability = auto_dtype(device, model_type, **hardware)
    from_trainer = precision_dtype(trainer_precision)
    if compute_dtype == "auto":
        dtype = from_trainer or auto
        reason = (f"compute_dtype auto -> {dtype}: {why}" if from_trainer in (None, auto)
                  else f"compute_dtype auto -> {dtype}: follows trainer.precision={trainer_precision} "
                       f"(auto alone would pick {auto}: {why})")
    else:
        dtype, reason = compute_dtype, f"model.compute_dtype={compute_dtype} as set (auto would pick {auto}: {why})"
    true_precision = trainer_precision is not None and str(trainer_precision).endswith("-true")
    if true_precision and from_trainer and from_trainer != dtype:
        # Lightning's `-true` precisions cast the module, 4-bit storage included, to their dtype.
        harm = ("numerically casts bitsandbytes' packed 4-bit weights (stored as model.compute_dtype) and corrupts "
                "them" if quantized else f"casts the whole model to {from_trainer}, so compute_dtype is not used")
        raise ConfigError(
            f"model.compute_dtype={dtype} with trainer.precision={trainer_precision}: Lightning {harm}; set "
            f"model.compute_dtype to {from_trainer} (or auto), or trainer.precision to {TRAINER_PRECISION[dtype]}."
        )
    if trainer_precision is None:
        trainer_precision = TRAINER_PRECISION[dtype]
        if device == "cpu" and trainer_precision == "16-mixed":  # Lightning's CPU autocast is bf16 only
            trainer_precision = "16-true"
    return Numerics(dtype, str(trainer_precision), reason, device, capability)

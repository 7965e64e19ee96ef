"""On a CUDA device only (`pytest -m gpu`; skipped elsewhere): `auto` resolves from the real
device, and a real QLoRA round (bitsandbytes' CUDA kernels, the hf sampler) trains an adapter
whose LoRA tensors all moved, with the dtype it used in the manifest. The GPU kit
(bench/gpu_smoke.py) measures; these only check. The tiny model takes its tokenizer from
`gpu-kit/tokenizer` where the GPU image lacks the demo model's package (`make gpu-kit`)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from soft_lightning.models.precision import resolve
from soft_lightning.rounds.store import RoundStore
from tests.helpers.cli import ROOT, run_ok, tiny_run_args
from tests.helpers.tiny_model import build_tiny_llama

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def gpu_tiny_model(tmp_path_factory) -> str:
    kit = ROOT / "gpu-kit" / "tokenizer"
    if kit.is_dir():
        tokenizer = str(kit)
    else:
        from soft_lightning.models.source import resolve_model

        tokenizer = resolve_model("smollm2-135m-instruct")
    return str(build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", tokenizer))


def test_auto_follows_the_devices_compute_capability():
    major, _ = torch.cuda.get_device_capability()
    numerics = resolve("auto", None, "cuda", model_type="llama")
    assert numerics.dtype == ("bfloat16" if major >= 8 else "float16")


def test_a_cuda_qlora_round_trains_every_lora_tensor(gpu_tiny_model, tmp_path):
    out = tmp_path / "run"
    run_ok(*tiny_run_args(gpu_tiny_model, out, "hf", "--bootstrap.rounds", "1", "--trainer.accelerator", "gpu",
                          "--trainer.devices", "1", "--model.quantization", "nf4", "--model.warmup_steps", "0"))
    manifest = RoundStore(out).read_manifest(0)
    assert manifest["numerics"]["device"] == "cuda"
    assert manifest["numerics"]["dtype"] == resolve("auto", None, "cuda", model_type="llama").dtype
    tensors = load_file(Path(RoundStore(out).adapter_dir(0)) / "adapter_model.safetensors")
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert len(tensors) == 28 and all(t.abs().sum() > 0 for t in lora_b), "an adapter tensor did not train"

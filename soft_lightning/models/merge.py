"""A round's LoRA adapter folded into full-precision base weights, for generation
(`bootstrap.adapter_sync: merged`).

The training model's base is 4-bit, and merging into 4-bit weights ruins the adapter (peft#2321,
TRL#3466). Generation instead gets W + B·A·scale, computed in float32 from the base checkpoint's
own weights: the same tensors whatever was merged before, so un-merging is re-reading the base,
never subtracting in bf16.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils.other import get_pattern_key
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from soft_lightning.utils.errors import ConfigError

ADAPTER_PREFIX = "base_model.model."


class AdapterMerger:
    """Yields the weights that turn a generation copy of `base` into base+adapter (None = the
    base), under the base checkpoint's names: `changes` only those that differ from the last
    adapter's (to copy into a model's parameters), `weights` all of them (for an engine that
    re-processes its weights as it loads them, as vLLM's in-place reload does)."""

    def __init__(self, base: str):
        self.base = Path(base)
        index = self.base / "model.safetensors.index.json"
        if index.is_file():
            files = json.loads(index.read_text())["weight_map"]
        else:
            with safe_open(self.base / "model.safetensors", "pt") as fh:
                files = dict.fromkeys(fh.keys(), "model.safetensors")
        self.files: dict[str, str] = files  # weight name -> the checkpoint file holding it
        self._changed: set[str] = set()
        self.adapter: Path | None = None

    def base_weight(self, name: str) -> torch.Tensor:
        with safe_open(self.base / self.files[name], "pt") as fh:
            return fh.get_tensor(name)

    def deltas(self, adapter: Path) -> dict[str, Callable[[], torch.Tensor]]:
        """Per adapted weight (by the base checkpoint's names), what computes its B·A·scale in
        float32: one weight's delta at a time, never all of a 7B model's at once."""
        config = LoraConfig.from_pretrained(str(adapter))  # peft's reading, defaults and all
        if config.use_dora or config.bias != "none" or config.fan_in_fan_out or config.modules_to_save:
            raise ConfigError(f"bootstrap.adapter_sync=merged folds plain LoRA only; {adapter} uses DoRA, biases, "
                              "fan_in_fan_out or modules_to_save. Use bootstrap.adapter_sync=lora.")
        tensors = load_file(adapter / "adapter_model.safetensors")
        deltas = {}
        for key, lora_a in tensors.items():
            if ".lora_A." not in key:
                continue
            module = key.removeprefix(ADAPTER_PREFIX).split(".lora_A.")[0]
            lora_b = tensors[key.replace(".lora_A.", ".lora_B.")]
            rank = lora_a.shape[0]
            # peft matches alpha_pattern keys as regexes against the module name's suffix.
            alpha = config.alpha_pattern.get(get_pattern_key(list(config.alpha_pattern), module), config.lora_alpha)
            scale = alpha / (math.sqrt(rank) if config.use_rslora else rank)
            deltas[f"{module}.weight"] = partial(_delta, lora_b, lora_a, scale)
        unknown = sorted(set(deltas) - set(self.files))
        if unknown:
            raise ConfigError(f"{adapter} adapts {unknown[0]}, which {self.base} does not have; was it trained on "
                              "another model?")
        return deltas

    def changes(self, adapter: Path | None) -> Iterator[tuple[str, torch.Tensor]]:
        """The (name, weight) updates from the last adapter merged to `adapter`, one at a time."""
        deltas = self.deltas(adapter) if adapter is not None else {}
        names = sorted(self._changed | set(deltas))
        self._changed, self.adapter = set(deltas), adapter
        for name in names:
            weight = self.base_weight(name)
            if name in deltas:
                weight = (weight.float() + deltas[name]()).to(weight.dtype)
            yield name, weight

    def weights(self, adapter: Path | None, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Every weight of the base, with the adapter folded in where it adapts one (cast to
        `dtype`, the receiving model's, if given)."""
        deltas = self.deltas(adapter) if adapter is not None else {}
        self._changed, self.adapter = set(deltas), adapter
        for name in self.files:
            weight = self.base_weight(name)
            if name in deltas:
                weight = weight.float() + deltas[name]()
            yield name, weight.to(dtype or weight.dtype)


def write_safetensors_shards(weights: Iterator[tuple[str, torch.Tensor]], folder: Path, shard_bytes: int) -> None:
    """`weights` as safetensors files in `folder`, each up to `shard_bytes` (a larger tensor alone),
    so only one shard is in memory at a time."""
    shard: dict[str, torch.Tensor] = {}
    size, count = 0, 0

    def flush() -> None:
        nonlocal shard, size, count
        if shard:
            save_file(shard, str(folder / f"model-{count:05d}.safetensors"))
            shard, size, count = {}, 0, count + 1

    for name, weight in weights:
        if size and size + weight.nbytes > shard_bytes:
            flush()
        shard[name] = weight.contiguous()
        size += weight.nbytes
    flush()


def _delta(lora_b: torch.Tensor, lora_a: torch.Tensor, scale: float) -> torch.Tensor:
    return (lora_b.float() @ lora_a.float()) * scale

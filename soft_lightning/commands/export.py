"""`python -m soft_lightning export OUT_DIR`: a round's adapter merged into the *unquantised* base,
saved as a Hugging Face model folder that transformers, vLLM or any other tool loads as it is.

The adapter was trained on the nf4 base; merging into 4-bit weights ruins it (see merge.py), so
each adapted weight becomes W + B·A·scale in float32 from the base checkpoint's own tensors, then
the export dtype, one checkpoint file at a time (a 70B export never holds the whole model). The
folder gets the base's config, tokenizer, chat template and generation config, a model card with
the run's settings and round table, and the adapter as it is (`adapter/`, for peft users).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from soft_lightning.models.merge import AdapterMerger
from soft_lightning.models.precision import DTYPES
from soft_lightning.models.source import resolve_model
from soft_lightning.rounds import table
from soft_lightning.rounds.store import RoundStore
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.files import write_folder_atomic, write_json_atomic

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def export(out_dir: str, round: str = "best", dest: str | None = None,
           dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16", model: str | None = None,
           overwrite: bool = False) -> Path:
    """Merge a round's adapter into the full-precision base and save a model folder.

    Args:
        out_dir: the run's out_dir (its plan names the base model).
        round: `best` (best/best.json), `last`, or a trained round's number.
        dest: the folder to write; default `<out_dir>/export/round_<r>`.
        dtype: the exported weights' dtype.
        model: the base model, if not the run's (its plan's `model`); must be a local HF folder
            (or a short name / .gguf, converted as for training).
        overwrite: replace an existing `dest`.
    """
    store, plan = RoundStore.open_run(out_dir, "export")
    r = store.round_named(round, "export --round")
    target = Path(dest) if dest else store.root / "export" / f"round_{r}"
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ConfigError(f"export --dest: {target} already exists; pass --overwrite true or another --dest.")
    name = model or plan.setting("model.model_name_or_path")
    base = Path(resolve_model(name))
    if not (base / "config.json").is_file() or not any((base / weights).is_file() for weights in WEIGHTS):
        raise ConfigError(f"export --model: {base} is not a local model folder with safetensors weights; pass one "
                          "with --model (e.g. a `huggingface-cli download` folder).")
    adapter, best = store.adapter_dir(r), store.best_round()

    def fill(folder: Path) -> None:
        _write_weights(AdapterMerger(str(base)), adapter, folder, DTYPES[dtype])
        _copy_model_files(base, folder, dtype)
        shutil.copytree(adapter, folder / "adapter")
        write_json_atomic(folder / "soft_export.json", {
            "run": str(store.root.resolve()), "round": r, "base": str(base), "dtype": dtype, "adapter": str(adapter),
            "best_round": best})
        (folder / "README.md").write_text(model_card(store, plan.identity, r, best, name, dtype), encoding="utf-8")
        _readable_by_all(folder)

    write_folder_atomic(target, fill)
    print(f"[soft] round {r} merged into {name} ({dtype}) -> {target}")
    return target


def _write_weights(merger: AdapterMerger, adapter: Path, folder: Path, dtype: torch.dtype) -> None:
    """The merged weights in the base checkpoint's own file layout, one file in memory at a time."""
    files: dict[str, dict[str, torch.Tensor]] = {}
    pending = Counter(merger.files.values())  # weights still to come, per checkpoint file
    total = 0
    for name, weight in merger.weights(adapter, dtype):
        file = merger.files[name]
        files.setdefault(file, {})[name] = weight.contiguous()
        total += weight.numel() * weight.element_size()
        pending[file] -= 1
        if pending[file] == 0:
            save_file(files.pop(file), folder / file, metadata={"format": "pt"})
    if len(pending) > 1:
        write_json_atomic(folder / "model.safetensors.index.json",
                          {"metadata": {"total_size": total}, "weight_map": merger.files})


def _copy_model_files(base: Path, folder: Path, dtype: str) -> None:
    """Config (with the export dtype), tokenizer, chat template and generation config."""
    for path in base.iterdir():
        if path.is_file() and path.suffix in (".json", ".jinja", ".txt", ".model") and path.name not in WEIGHTS:
            shutil.copy2(path, folder / path.name)
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config", None)
    config["torch_dtype" if "torch_dtype" in config else "dtype"] = dtype
    write_json_atomic(folder / "config.json", config)


def _readable_by_all(folder: Path) -> None:
    """The permissions a plain `cp` would give (temporary folders and files are owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def model_card(store: RoundStore, identity: dict, r: int, best: int | None, base: str, dtype: str) -> str:
    """README.md of the export: what it is, how it was made, the round table, how to load it."""
    columns, rows = table.readable(table.rows(store))
    configs = sorted(store.root.glob("lightning_logs/version_*/config.yaml"), key=lambda p: p.stat().st_mtime)
    lines = ["---", "library_name: transformers", "tags: [soft-lightning, self-alignment, lora-merged]", "---", "",
             f"# {base}, SOFT round {r}", "",
             f"`{base}` with the LoRA adapter of round {r} of a SOFT (Step-On-Feet Tuning, arXiv 2402.07610) "
             f"bootstrapped self-alignment run merged in, saved in {dtype}. Made by `python -m soft_lightning export`"
             f"{' (the run’s best round by its validation monitor)' if r == best else ''}. The adapter, trained on "
             "the 4-bit (nf4) base, is in `adapter/` as it was saved.", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "model = AutoModelForCausalLM.from_pretrained(PATH)",
             "tokenizer = AutoTokenizer.from_pretrained(PATH)  # with the base's chat template", "```", ""]
    if warning := table.below_decline(rows, r):
        lines += [f"> **Warning:** {warning}.", ""]
    lines += ["## Rounds", ""]
    if rows:
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(table.cell(row.get(c)) for c in columns) + " |" for row in rows]
    lines += ["", "## Run settings", "", "The run's identity (plan.json):", "", "```json",
              json.dumps(identity, indent=1), "```", ""]
    if configs:
        lines += ["Its configuration (`fit --config` as LightningCLI saved it):", "", "```yaml",
                  configs[-1].read_text(encoding="utf-8").rstrip(), "```", ""]
    return "\n".join(lines)

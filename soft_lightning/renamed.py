"""Settings and class paths that have moved: a config or command line that still uses an old
name is refused in one sentence naming the new one, before anything is parsed or loaded (the
parser's own message would only say the key is unknown)."""

from __future__ import annotations

from pathlib import Path

import yaml

from soft_lightning.utils.errors import ConfigError

# Old key -> new key (the settings that joined the `bootstrap.sampler` and `bootstrap.icl` sections).
KEYS = {
    "bootstrap.sampler_process": "bootstrap.sampler.process",
    "bootstrap.adapter_sync": "bootstrap.sampler.adapter_sync",
    "bootstrap.vllm": "bootstrap.sampler.vllm",
    "bootstrap.hf_batch_tokens": "bootstrap.sampler.hf_batch_tokens",
    "bootstrap.principles": "bootstrap.icl.principles",
    "bootstrap.icl_pool": "bootstrap.icl.pool",
    "bootstrap.icl_examples": "bootstrap.icl.examples",
    "bootstrap.icl_self": "bootstrap.icl.self_examples",
}
# Keys that became sections: a plain value there is the setting that is now this key.
SECTIONS = {"bootstrap.sampler": "bootstrap.sampler.backend", "bootstrap.icl": "bootstrap.icl.strategy"}
CLASS_PATHS = {
    "callbacks.bootstrap.BootstrapCallback": "soft_lightning.callbacks.BootstrapCallback",
    "callbacks.BootstrapCallback": "soft_lightning.callbacks.BootstrapCallback",
    "callbacks.paired_early_stopping.PairedEarlyStopping": "soft_lightning.callbacks.PairedEarlyStopping",
    "soft_lightning.module.SoftModule": "soft_lightning.training.module.SoftModule",
    "soft_lightning.data.SoftDataModule": "soft_lightning.training.data.SoftDataModule",
}


def _refuse(old: str, new: str, where: str) -> None:
    raise ConfigError(f"{old} (in {where}) is now {new}; rename it there.")


def _check_tree(value, where: str, prefix: str = "") -> None:
    """A config's nested settings: old keys, old plain values of new sections, old class paths."""
    if isinstance(value, dict):
        for key, inner in value.items():
            dotted = f"{prefix}{key}"
            if dotted in KEYS:
                _refuse(dotted, KEYS[dotted], where)
            if dotted in SECTIONS and not isinstance(inner, dict):
                _refuse(f"{dotted}: {inner}", f"{SECTIONS[dotted]}: {inner}", where)
            if key == "class_path" and inner in CLASS_PATHS:
                _refuse(f"class_path {inner}", CLASS_PATHS[inner], where)
            _check_tree(inner, where, f"{dotted}." if key != "init_args" else prefix)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, where, "" if prefix.startswith("trainer.") else prefix)


def check_renamed(args: list[str]) -> None:
    """Refuse old names in the command line and in the `--config` files it names."""
    for i, arg in enumerate(args):
        key, _, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--"):
            continue
        value = value or (args[i + 1] if i + 1 < len(args) else "")
        if key in KEYS or any(key.startswith(old + ".") for old in KEYS):
            old = next(o for o in KEYS if key == o or key.startswith(o + "."))
            _refuse(f"--{key}", "--" + KEYS[old] + key[len(old):], "the command line")
        if key in SECTIONS and not value.lstrip().startswith("{"):
            _refuse(f"--{key} {value}", f"--{SECTIONS[key]} {value}", "the command line")
        for old, new in CLASS_PATHS.items():
            if old in value and ("soft_lightning." + old) not in value:
                _refuse(f"class_path {old}", new, f"--{key}")
        if key == "config" and Path(value).is_file():
            try:
                tree = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
            except yaml.YAMLError:
                continue  # the parser names a broken file itself
            _check_tree(tree, value)

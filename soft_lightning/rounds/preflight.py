"""Pre-flight: the mistakes that would otherwise end in a library's traceback after the model or
the engine has loaded (or, worse, run anyway), checked before anything heavy loads, each answered
in one sentence that names the key and a fix. docs/how-it-works.md's table lists every class.

Each function checks one class, from settings and small files alone (a tokenizer, a model's
config.json, a meta-device model with no weights).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from soft_lightning.models.encoding import Encoder
from soft_lightning.rounds.icl import Example
from soft_lightning.sampler.settings import VLLMOptions
from soft_lightning.utils.errors import ConfigError


def check_out_dir(path: str | Path) -> None:
    """`bootstrap.out_dir` can be created and written: tried (a folder made and removed in the
    nearest one that exists), so nothing is left behind when it cannot."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"bootstrap.out_dir: {path} is a file, not a folder; choose a folder (it is created if "
                          "missing).")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"bootstrap.out_dir: {path} cannot be created, since {existing} is a file; choose a folder "
                          "elsewhere.")
    try:
        tempfile.TemporaryDirectory(prefix=".soft-write-test-", dir=existing).cleanup()
    except OSError as err:
        raise ConfigError(f"bootstrap.out_dir: {path} cannot be written ({err.strerror} in {existing}); choose a "
                          "folder you can write to.") from None


def check_icl_pool(pool: list[Example], examples: int, path: str) -> None:
    """A pool smaller than a prompt's examples would silently show fewer than configured."""
    if len(pool) < examples:
        raise ConfigError(f"bootstrap.icl.pool: {path} holds {len(pool)} examples but bootstrap.icl.examples="
                          f"{examples} are shown with every prompt; lower bootstrap.icl.examples or add examples.")


def check_context(encoder: Encoder, principles: str, pool: list[Example], examples: int, max_prompt_tokens: int,
                  max_new_tokens: int, context: int | None, context_key: str) -> None:
    """The longest few-shot prompt a round can render (the principles, the `examples` longest
    in-context examples, a prompt of `data.max_prompt_tokens`) plus the answer must fit the
    context the sampler has."""
    if not context:
        return
    longest = sorted(pool, key=lambda e: len(encoder.ids(e.prompt)) + len(encoder.ids(e.response)))[-examples:]
    few_shot = len(encoder.ids(encoder.format.generation_prompt(principles, longest, ""))) + max_prompt_tokens
    if few_shot + max_new_tokens > context:
        raise ConfigError(
            f"{context_key}={context} is too short for the longest few-shot prompt: the principles, "
            f"{examples} in-context examples and a prompt of up to data.max_prompt_tokens={max_prompt_tokens} make "
            f"{few_shot} tokens, plus bootstrap.sampling.max_new_tokens={max_new_tokens}; raise {context_key}, or "
            "lower bootstrap.icl.examples, data.max_prompt_tokens or bootstrap.sampling.max_new_tokens."
        )


def sampler_context(backend: str, options: VLLMOptions, config: dict) -> tuple[int | None, str]:
    """(tokens a prompt and its answer may take, the key that sets it)."""
    if backend == "vllm" and options.max_model_len:
        return options.max_model_len, "bootstrap.sampler.vllm.max_model_len"
    return config.get("max_position_embeddings"), "the model's max_position_embeddings"


def kv_bytes_per_token(config: dict, dtype: str) -> int | None:
    """Bytes of KV cache one token takes in every layer (None: the config does not say)."""
    try:
        heads = config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads", heads)
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        layers = config["num_hidden_layers"]
    except (KeyError, TypeError):
        return None
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=getattr(torch, dtype)).element_size()


def check_kv_cache(options: VLLMOptions, config: dict, dtype: str) -> None:
    """A KV cache set in bytes must hold one sequence of `max_model_len` tokens."""
    per_token = kv_bytes_per_token(config, dtype)
    length = options.max_model_len or config.get("max_position_embeddings")
    if options.kv_cache_memory_bytes is None or per_token is None or not length:
        return
    if options.kv_cache_memory_bytes < per_token * length:
        raise ConfigError(
            f"bootstrap.sampler.vllm.kv_cache_memory_bytes={options.kv_cache_memory_bytes} holds "
            f"{options.kv_cache_memory_bytes // per_token} tokens of this model's KV cache ({per_token} bytes a token "
            f"in {dtype}), fewer than one sequence of max_model_len={length}; raise it to at least "
            f"{per_token * length}, or lower bootstrap.sampler.vllm.max_model_len."
        )


def numa_nodes() -> int:
    nodes = list(Path("/sys/devices/system/node").glob("node[0-9]*"))
    return max(1, len(nodes))


def check_parallel_size(options: VLLMOptions, world: int, device: str) -> None:
    """An engine's tensor-parallel group must fit the devices this machine has: GPUs, or on the
    CPU backend its NUMA nodes (one per worker)."""
    tp = options.tensor_parallel_size
    if tp == 1:
        return
    if device == "cuda":
        have, what = torch.cuda.device_count(), "GPUs"
    else:
        have, what = numa_nodes(), "NUMA nodes (vLLM's CPU backend runs one worker per node)"
    if tp > have:
        raise ConfigError(f"bootstrap.sampler.vllm.tensor_parallel_size={tp} needs {tp} {what}, and this machine has "
                          f"{have}; lower it to at most {have}.")


def module_names(source: str, trust_remote_code: bool) -> tuple[set[str], set[str]]:
    """The last part of every module's name in `source`'s model, and of its linear layers' names,
    from the model built on the meta device (no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    modules = [(name.rsplit(".", 1)[-1], module) for name, module in model.named_modules() if name]
    return {name for name, _ in modules}, {name for name, module in modules if isinstance(module, torch.nn.Linear)}


def check_target_modules(target_modules: str | list[str], source: str, trust_remote_code: bool) -> None:
    """Every name in `model.target_modules` is a module of the model (peft matches a list entry
    against the end of each module's name)."""
    if isinstance(target_modules, str):  # `all-linear`, or a regex peft matches itself
        return
    every, linear = module_names(source, trust_remote_code)
    missing = [name for name in target_modules if name.rsplit(".", 1)[-1] not in every]
    if missing:
        raise ConfigError(f"model.target_modules names {', '.join(missing)}, which {source} has no module called; "
                          f"its linear layers are {', '.join(sorted(linear))} (or use all-linear).")


# What the run logs at each validation, and the setting each family needs (signals/zero_shot.py,
# training/module.py).
ZERO_SHOT_METRICS = ("val/aligned", "val/relevance", "val/correct", "val/correct_and_rules", "val/refusal_recall",
                     "val/false_refusal", "val/capability", "val/judged")
MC_METRICS = ("val/mc_acc", "val/mc_acc_norm", "val/mc_margin", "val/loss")


def check_monitors(callbacks: list, *, zero_shot: bool, judge: bool, multiple_choice: bool) -> None:
    """A callback that monitors a metric this run never logs would fail (or pick nothing) only
    after round 0 has trained: refuse it now."""
    for callback in callbacks:
        name = getattr(callback, "monitor", None)
        if not isinstance(name, str):
            continue
        if (name in ZERO_SHOT_METRICS or name.startswith("val/adherence")) and not zero_shot:
            needs = "bootstrap.zero_shot.prompts (held-out prompts answered after every round)"
        elif name == "val/judged" and not judge:
            needs = "bootstrap.zero_shot.judge.model (a judge of every answer)"
        elif name in MC_METRICS and not multiple_choice:
            needs = "data.val_path (a multiple-choice validation set)"
        else:
            continue
        raise ConfigError(f"trainer.callbacks: {type(callback).__name__}(monitor={name}) watches a metric logged only "
                          f"with {needs}, which this run has off; set it, or monitor another metric.")

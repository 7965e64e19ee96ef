"""Every rank works: forward passes outside training (curriculum scoring, diagnostics) split their
items over the ranks and gather the results, so N devices do 1/N each and FSDP, whose sharded
weights need every rank in every forward, works at all. Rank 0 only writes files.

`strategy` is Lightning's (anything with `world_size` and `global_rank`); None means one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch.distributed as dist

from soft_lightning.utils.progress import Progress, progress_bar


def world_of(strategy) -> tuple[int, int]:
    """(rank, world size)."""
    if strategy is None:
        return 0, 1
    return strategy.global_rank, strategy.world_size


def gather_objects(strategy, obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (picklable objects; the collective runs on the
    process group's own device, so NCCL accepts it)."""
    _, world = world_of(strategy)
    if world == 1 or not dist.is_available() or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def sigterm_without_collectives(trainer) -> None:
    """Lightning 2.6's SIGTERM handler broadcasts from rank 0 inside the handler, on whichever rank
    the signal reaches: on a rank signalled alone, or between two collectives (generation, scoring),
    that broadcast pairs with another rank's all-gather and every rank hangs. Here the handler only
    forwards the signal to the ranks the launcher started and sets the flag; the ranks agree on it
    at points where all of them call a collective (`any_rank`)."""
    connector = trainer._signal_connector  # registered after the setup hooks, so this one is used

    def notify(signum, _frame) -> None:
        if not connector.received_sigterm and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)
        connector.received_sigterm = True

    connector._sigterm_notifier_fn = notify


def any_rank(trainer) -> bool:
    """Whether any rank has seen a SIGTERM (a collective: every rank calls it at the same point);
    if so every rank's flag is set, so Lightning's own checks stop them all."""
    seen = trainer.received_sigterm
    if trainer.world_size > 1:
        seen = trainer.strategy.reduce_boolean_decision(seen, all=False)
    if seen:
        trainer._signal_connector.received_sigterm = True
    return seen


@contextmanager
def root_parameters(strategy):
    """Forward passes outside Lightning's loops call the inner model, not the FSDP root: the root
    unit's own parameters (embeddings, final norm, LM head) are then flat 1-D shards. Gather them
    for the duration, on every rank (the wrapped layers gather theirs in their own forward, which
    every rank runs equally often); elsewhere nothing to do."""
    root = getattr(strategy, "model", None)
    if root is None or type(root).__name__ != "FullyShardedDataParallel":
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.summon_full_params(root, recurse=False, writeback=False):
        yield


def shard_map(fn: Callable[[list, Progress], list], items: list, strategy, description: str | None = None,
              unit: str = "item", per_item: int = 1) -> list:
    """`fn` over `items`, split across the ranks (rank k takes items k, k+world, ...), the
    results gathered back into item order on every rank; rank 0 shows a progress bar of its
    share when given a `description` (`fn` gets its update function, counting `per_item` `unit`s
    per item).

    Every rank gets the same number of items (the short ones padded with copies of the first item,
    whose results are dropped), so the ranks run the same number of forward passes, as FSDP needs.
    """
    rank, world = world_of(strategy)
    mine = items[rank::world]
    per_rank = math.ceil(len(items) / world)
    with progress_bar(description or "", per_rank * per_item, unit, show=rank == 0 and description is not None) \
            as progress, \
            root_parameters(strategy):
        results = fn(mine + items[:1] * (per_rank - len(mine)), progress)[: len(mine)]
    if world == 1 or not items:
        return results
    out: list = [None] * len(items)
    for k, part in enumerate(gather_objects(strategy, results)):
        out[k::world] = part
    return out

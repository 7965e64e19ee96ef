"""Every rank works: forward passes outside training (curriculum scoring, diagnostics) split their
items over the ranks and gather the results, so N devices do 1/N each and FSDP, whose sharded
weights need every rank in every forward, works at all. Rank 0 only writes files.

`strategy` is Lightning's (anything with `world_size` and `global_rank`); None means one process.
"""

from __future__ import annotations

import itertools
import math
import signal
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch.distributed as dist

from soft_lightning.utils.faults import kill_point
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


class Preemption:
    """SIGTERM (a preemption, SLURM's time limit) as several ranks need it.

    Lightning 2.6's own handler broadcasts from rank 0 inside the handler, on whichever rank the
    signal reaches: on a rank signalled alone, or between two collectives (generation, scoring),
    that broadcast pairs with another rank's all-gather and every rank hangs. `watch` replaces it
    (with `signal.signal`, once Lightning has installed its own) by one that only forwards the signal
    to the ranks this process launched and notes it; the ranks agree on it where all of them call a
    collective (`any_rank`), or read the round store's stop flag between generation chunks."""

    def __init__(self):
        self.seen = False

    def watch(self, trainer) -> None:
        """Handle SIGTERM from here on (idempotent; call it after Lightning's set-up, in the main thread)."""
        def on_sigterm(signum, _frame) -> None:
            if not self.seen and trainer.strategy.launcher is not None:
                trainer.strategy.launcher.kill(signum)
            self.seen = True

        if getattr(signal.getsignal(signal.SIGTERM), "__qualname__", "") != on_sigterm.__qualname__:
            signal.signal(signal.SIGTERM, on_sigterm)

    def received(self, trainer) -> bool:
        """Whether this rank was signalled (by our handler, or Lightning's before ours took over)."""
        return self.seen or trainer.received_sigterm

    def any_rank(self, trainer) -> bool:
        """Whether any rank was signalled (a collective: every rank calls it at the same point)."""
        seen = self.received(trainer)
        if trainer.world_size > 1:
            seen = trainer.strategy.reduce_boolean_decision(seen, all=False)
        self.seen = self.seen or seen
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
              unit: str = "item", stop: Callable[[], None] | None = None) -> list:
    """`fn` over `items`, split across the ranks (rank k takes items k, k+world, ...), the
    results gathered back into item order on every rank; rank 0 shows a progress bar of its
    share when given a `description` (`fn` gets its update function, counting one `unit` per item).

    Every rank gets the same number of items (the short ones padded with copies of the first item,
    whose results are dropped), so the ranks run the same number of forward passes, as FSDP needs,
    and call `stop` (a collective may be in it) after the same ones: wherever `fn` reports progress.
    """
    rank, world = world_of(strategy)
    mine = items[rank::world]
    per_rank = math.ceil(len(items) / world)
    with progress_bar(description or "", per_rank, unit, show=rank == 0 and description is not None) as bar, \
            root_parameters(strategy):
        batches = itertools.count()

        def progress(*done) -> None:
            bar(*done)
            kill_point(f"scored:{description}:{next(batches)}")
            if stop is not None:
                stop()

        results = fn(mine + items[:1] * (per_rank - len(mine)), progress)[: len(mine)]
    if world == 1 or not items:
        return results
    out: list = [None] * len(items)
    for k, part in enumerate(gather_objects(strategy, results)):
        out[k::world] = part
    return out

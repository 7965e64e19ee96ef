"""Progress bars for the phases Lightning's own bar does not cover (generation, scoring): items
done, tokens/s and the time left, on rank 0 only. The phase opens the bar and hands its update
function (a `Progress`) to the code doing the work; no bar is global."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Progress = Callable[..., None]  # progress(items done, tokens processed=0)


def no_progress(items: int, tokens: int = 0) -> None:
    """The update of a bar that is not shown (other ranks, nothing to do)."""


class _Bar:
    def __init__(self, bar):
        self.bar, self.tokens, self.t0 = bar, 0, time.perf_counter()

    def update(self, items: int, tokens: int = 0) -> None:
        self.tokens += tokens
        if self.tokens:
            rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{rate:.1f} tok/s", refresh=False)
        self.bar.update(items)


@contextmanager
def progress_bar(description: str, total: int, unit: str, show: bool = True) -> Iterator[Progress]:
    """A tqdm bar for the block, yielding its update function (redrawn at most every 30 s when
    the output is not a terminal)."""
    if not show or total == 0:
        yield no_progress
        return
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    with tqdm(total=total, desc=f"[soft] {description}", unit=unit, dynamic_ncols=True, disable=False,
              mininterval=0.5 if interactive else 30.0) as bar:
        yield _Bar(bar).update

"""Named points where the kill-and-resume tests disturb the real process.

`SOFT_LIGHTNING_KILL_AT=<point>` makes the process send itself a signal when it reaches that
point (`<point>@<n>`: the n-th time it does): SIGKILL (no chance to clean up), or the one
`SOFT_LIGHTNING_SIGNAL` names (`TERM` for a preemption); with `SOFT_LIGHTNING_KILL_RANK=<k>` only
the process of global rank k does. Inside a scoring split over the ranks: `scored:<its name>:<batch>`
(relevance, capability, diagnostics...), after each batch.
`SOFT_LIGHTNING_DELAY_AT=<point>,<point>,...` makes it sleep `SOFT_LIGHTNING_DELAY_SECONDS` there
(a slow rank), only on `SOFT_LIGHTNING_DELAY_RANK=<k>` if set. `SOFT_LIGHTNING_KILL_WHEN=<glob>:<n>`
holds the kill until n files match the glob (every rank's chunk on disk: a state, not a race
between ranks). Unset (always, outside tests) they do nothing.
"""

import collections
import glob
import os
import signal
import time


def _this_rank(variable: str) -> bool:
    only = os.environ.get(variable)
    return only in (None, os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


_reached: collections.Counter = collections.Counter()


def kill_point(name: str) -> None:
    _reached[name] += 1
    if name in os.environ.get("SOFT_LIGHTNING_DELAY_AT", "").split(",") and _this_rank("SOFT_LIGHTNING_DELAY_RANK"):
        time.sleep(float(os.environ.get("SOFT_LIGHTNING_DELAY_SECONDS", "5")))
    if os.environ.get("SOFT_LIGHTNING_KILL_AT") in (name, f"{name}@{_reached[name]}") and \
            _this_rank("SOFT_LIGHTNING_KILL_RANK"):
        if os.environ.get("SOFT_LIGHTNING_KILL_WHEN"):
            pattern, count = os.environ["SOFT_LIGHTNING_KILL_WHEN"].rsplit(":", 1)
            while len(glob.glob(pattern)) < int(count):
                time.sleep(0.2)
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("SOFT_LIGHTNING_SIGNAL", "KILL")))

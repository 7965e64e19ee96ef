"""Named points where the kill-and-resume tests signal the real process.

`SOFT_LIGHTNING_KILL_AT=<point>` makes the process send itself a signal when it reaches that
point: SIGKILL (no chance to clean up), or the one `SOFT_LIGHTNING_SIGNAL` names (`TERM` for a
preemption); with `SOFT_LIGHTNING_KILL_RANK=<k>` only the process of global rank k does. Unset
(always, outside tests) it does nothing.
"""

import os
import signal


def kill_point(name: str) -> None:
    only = os.environ.get("SOFT_LIGHTNING_KILL_RANK")
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    if os.environ.get("SOFT_LIGHTNING_KILL_AT") == name and only in (None, rank):
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("SOFT_LIGHTNING_SIGNAL", "KILL")))

"""Named points where the kill-and-resume tests SIGKILL the real process.

Setting `SOFT_LIGHTNING_KILL_AT=<point>` makes the process kill itself, with no chance to
clean up, when it reaches that point; unset (always, outside tests) it does nothing.
"""

import os
import signal


def kill_point(name: str) -> None:
    if os.environ.get("SOFT_LIGHTNING_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)

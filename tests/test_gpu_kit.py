"""The GPU kit (bench/gpu_smoke.py) can be trusted with the scarce GPU minutes: every step is
listed by `--dry`, launched the way a second rank can be re-launched (`python -m`, torchrun for
several ranks, never `python -c`), with a rendezvous timeout inside the step's, and the steps this
machine cannot run are skipped with the reason instead of failing."""

import subprocess
import sys
from types import SimpleNamespace

from tests.helpers.cli import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_smoke  # noqa: E402


def test_every_step_launches_as_a_module_and_multi_rank_steps_through_torchrun_with_a_rendezvous_timeout(tmp_path):
    args = SimpleNamespace(prompts=4, max_new_tokens=16, extra=[])
    steps = gpu_smoke.plan(gpu_smoke.steps_for(["1b", "7b"]), gpus=2, have_vllm=False)
    names = [step.name for step in steps]
    assert names == ["1b/paged_adamw_8bit", "7b/paged_adamw_8bit", "1b/ddp_2_ranks", "1b/fsdp_2_ranks",
                     "1b/vllm_merged", "1b/vllm_lora", "1b/vllm_sleep", "1b/vllm_cuda_graphs", "1b/judged_by_base",
                     "1b/judged_by_7b"]
    for step in steps:
        cmd = gpu_smoke.command(step, tmp_path / "model", tmp_path / "out", args)
        fit = cmd.index("fit")
        assert "-c" not in cmd and cmd[fit - 2 : fit] == ["-m", "soft_lightning"], cmd
        assert "--trainer.accumulate_grad_batches" not in cmd, "the shipped gradient accumulation is kept"
        if step.ranks > 1:
            assert cmd[1:3] == ["-m", "torch.distributed.run"]
            assert f"join_timeout={gpu_smoke.RENDEZVOUS_SECONDS}" in cmd and gpu_smoke.RENDEZVOUS_SECONDS < 300
        assert (step.skip is not None) == step.needs_vllm, step.name
        judge = cmd[cmd.index("--bootstrap.zero_shot.judge.model") + 1] if step.judge else None
        assert judge == {None: None, "base": "base", "7b": str(tmp_path / "llama-7b")}[step.judge], step.name
    assert "vLLM does not import here" in steps[-3].skip
    one_gpu = gpu_smoke.plan(gpu_smoke.steps_for(["1b"]), gpus=1, have_vllm=True)
    assert [s.skip for s in one_gpu if s.ranks > 1] == ["needs 2 GPUs (1 here)"] * 2


def test_dry_lists_every_step_with_its_command_and_runs_nothing(tmp_path):
    result = subprocess.run([sys.executable, "bench/gpu_smoke.py", "--dry", "--work", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("-m soft_lightning fit") == 10 and "torch.distributed.run --standalone" in result.stdout
    assert not list(tmp_path.iterdir()), "--dry builds no model and runs no step"


def test_the_shipped_fsdp_overlay_picks_an_optimizer_fsdp_can_checkpoint(capsys):
    """configs/soft.yaml trains with paged 8-bit AdamW, which FSDP cannot checkpoint (refused):
    its FSDP overlay, as the kit's FSDP step uses it, switches to torch's AdamW."""
    import pytest

    from soft_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "soft.yaml"), "--config", str(ROOT / "configs" / "fsdp.yaml"),
              "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "  optimizer: adamw\n" in printed and "FSDPStrategy" in printed

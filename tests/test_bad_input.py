"""Each bad input fails with one clear sentence naming the file/key, before any model loads,
and leaves no round directory behind."""

import json
import re
import shutil
from pathlib import Path

import pytest

from soft_lightning.cli import main
from tests.helpers.cli import run_cli, tiny_run_args, trained_run_args


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def fails(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, err[-2000:]
    return message[0]


CASES = {
    "missing prompts file": (["--data.prompts", "{tmp}/nope.jsonl"], "data.prompts: file {tmp}/nope.jsonl does not exist"),
    "malformed JSONL line": (["--data.prompts", "{tmp}/bad.jsonl"], "bad.jsonl line 2: invalid JSON"),
    "missing required field": (["--data.prompts", "{tmp}/nofield.jsonl"], "nofield.jsonl line 1: missing required field 'prompt'"),
    "wrong field type": (["--data.prompts", "{tmp}/wrongtype.jsonl"], "field 'prompt' must be str, got int"),
    "empty pool": (["--data.prompts", "{tmp}/empty.jsonl"], "empty.jsonl holds no prompts"),
    "pool too small": (["--data.prompts_per_round", "300"], "needs 600"),
    "unknown model path": (["--model.model_name_or_path", "{tmp}/no-such-model"], "is not an existing folder or .gguf file"),
    "LoRA rank above vLLM's": (["--model.lora_r", "1024", "--bootstrap.sampler.backend", "vllm"], "above the largest LoRA rank vLLM serves (512)"),
    "MC label out of range": (["--data.val_path", "{tmp}/mc.jsonl"], "mc.jsonl line 1: label 7 is out of range for 2 choices"),
    "paged optimizer on CPU": (["--model.optimizer", "paged_adamw_8bit"], "model.optimizer=paged_adamw_8bit needs a CUDA device"),
    "8-bit optimizer under FSDP": (["--model.optimizer", "paged_adamw_8bit", "--config", "{tmp}/fsdp.yaml"],
                                   "model.optimizer=paged_adamw_8bit cannot be checkpointed under FSDP"),
    "non-UTF-8 bytes": (["--data.prompts", "{tmp}/latin1.jsonl"], "latin1.jsonl line 2: not valid UTF-8"),
    "missing ICL pool": (["--bootstrap.icl.pool", "{tmp}/no-pool.jsonl"], "bootstrap.icl.pool: file {tmp}/no-pool.jsonl does not exist"),
    "ICL example without response": (["--bootstrap.icl.pool", "{tmp}/icl.jsonl"], "example 'x' has an empty response"),
    "missing principles": (["--bootstrap.icl.principles", "{tmp}/no-rules.json"], "bootstrap.icl.principles: file {tmp}/no-rules.json does not exist"),
    "missing validation file": (["--data.val_path", "{tmp}/no-mc.jsonl"], "data.val_path: file {tmp}/no-mc.jsonl does not exist"),
    "order without a scorer": (["--bootstrap.within_round.order", "easy_to_hard"],
                               "bootstrap.within_round: order 'easy_to_hard' needs a scorer; choose one of perplexity"),
    "missing checkpoint": (["--ckpt_path", "{tmp}/none.ckpt"], "--ckpt_path: {tmp}/none.ckpt does not exist"),
    "--ckpt_path last with checkpoints elsewhere": (
        ["--ckpt_path", "last", "--trainer.callbacks", '[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
         '"init_args": {{"dirpath": "{tmp}/elsewhere"}}}}]'],
        "--ckpt_path last looks for the run's checkpoints in ModelCheckpoint's folders, but none writes to {tmp}/out/checkpoints"),
    "vLLM sleep mode on CPU": (["--bootstrap.sampler.backend", "vllm", "--bootstrap.sampler.vllm.sleep_between_rounds", "true"],
                               "bootstrap.sampler.vllm.sleep_between_rounds needs vLLM sleep mode, which the cpu platform lacks"),
    "duplicate prompt ids": (["--data.prompts", "{tmp}/dups.jsonl"], "duplicate id 'a'"),
    "more synthesized prompts than a round has": (["--bootstrap.prompt_synthesis.per_round", "7"],
                                                  "bootstrap.prompt_synthesis.per_round=7 is more than data.prompts_per_round=6"),
    "fp16 compute under bf16-true": (["--model.compute_dtype", "float16", "--trainer.precision", "bf16-true"],
                                     "model.compute_dtype=float16 with trainer.precision=bf16-true: Lightning numerically casts bitsandbytes' packed 4-bit weights"),
    "ICL pool with a repeated id": (["--bootstrap.icl.pool", "{tmp}/icl-dups.jsonl"],
                                    "icl-dups.jsonl line 2: duplicate id 'x' (first on line 1)"),
    "model folder whose config.json is {}": (["--model.model_name_or_path", "{tmp}/empty-model"],
                                            "empty-model/config.json is not valid JSON with a 'model_type'"),
    "trainer.default_root_dir": (["--trainer.default_root_dir", "{tmp}/logs"],
                                 "trainer.default_root_dir follows bootstrap.out_dir"),
    "a renamed key": (["--bootstrap.icl_examples", "2"],
                      "--bootstrap.icl_examples (in the command line) is now --bootstrap.icl.examples; rename it there"),
    "a key that became a section": (["--bootstrap.sampler", "hf"],
                                    "--bootstrap.sampler hf (in the command line) is now --bootstrap.sampler.backend hf"),
    "a renamed key in a config file": (["--config", "{tmp}/old.yaml"],
                                       "bootstrap.icl_pool (in {tmp}/old.yaml) is now bootstrap.icl.pool"),
    "an old class path in a config file": (["--config", "{tmp}/old-class.yaml"],
                                           "class_path callbacks.paired_early_stopping.PairedEarlyStopping (in "
                                           "{tmp}/old-class.yaml) is now soft_lightning.callbacks.PairedEarlyStopping"),
    "a run started before the identity held every setting": (
        ["--ckpt_path", "last", "--config", "{tmp}/out-v1.yaml"],
        "was started by an earlier soft_lightning whose plan.json records fewer settings"),
    # The pre-flight classes (soft_lightning/rounds/preflight.py; docs/how-it-works.md's table).
    "few-shot prompt longer than the engine's context": (
        ["--bootstrap.sampler.backend", "vllm", "--bootstrap.sampler.vllm.max_model_len", "128"],
        "bootstrap.sampler.vllm.max_model_len=128 is too short for the longest few-shot prompt"),
    "no room for one sequence's KV cache": (
        ["--bootstrap.sampler.backend", "vllm", "--bootstrap.sampler.vllm.kv_cache_memory_bytes", "100"],
        "bootstrap.sampler.vllm.kv_cache_memory_bytes=100 holds 0 tokens of this model's KV cache"),
    "tensor parallelism beyond the machine": (
        ["--bootstrap.sampler.backend", "vllm", "--bootstrap.sampler.vllm.tensor_parallel_size", "64"],
        "bootstrap.sampler.vllm.tensor_parallel_size=64 needs 64 NUMA nodes"),
    "out_dir that is a file": (["--bootstrap.out_dir", "{tmp}/bad.jsonl"], "bootstrap.out_dir: {tmp}/bad.jsonl is a file"),
    "out_dir below a file": (["--bootstrap.out_dir", "{tmp}/bad.jsonl/run"],
                             "bootstrap.out_dir: {tmp}/bad.jsonl/run cannot be created, since {tmp}/bad.jsonl is a file"),
    "out_dir where nothing can be written": (["--bootstrap.out_dir", "/proc/soft-lightning-run"],
                                             "bootstrap.out_dir: /proc/soft-lightning-run cannot be written"),
    "corrupt Parquet file": (["--data.prompts", "{tmp}/corrupt.parquet"], "corrupt.parquet is not a readable Parquet file"),
    "LoRA target the model lacks": (["--model.target_modules", "[q_proj, qkv_proj]"],
                                    "model.target_modules names qkv_proj, which"),
    "ICL pool smaller than the examples shown": (["--bootstrap.icl.pool", "{tmp}/icl-two.jsonl"],
                                                 "icl-two.jsonl holds 2 examples but bootstrap.icl.examples=3"),
    "missing judge model": (["--bootstrap.zero_shot.judge.model", "{tmp}/no-judge"],
                            "bootstrap.zero_shot.judge.model: '{tmp}/no-judge' is not an existing folder or .gguf file"),
    "judge template without the answer": (["--bootstrap.zero_shot.judge.model", "base",
                                           "--bootstrap.zero_shot.judge.template", "{{prompt}} {{question}}"],
                                          "bootstrap.zero_shot.judge.template: '{{prompt}} {{question}}' has no {{response}}"),
    "monitor never logged": (["--bootstrap.zero_shot.prompts", "null"],
                             "trainer.callbacks: EarlyStopping(monitor=val/aligned) watches a metric logged only with "
                             "bootstrap.zero_shot.prompts"),
    "monitor val/judged without a judge": (
        ["--trainer.callbacks", '[{{"class_path": "lightning.pytorch.callbacks.EarlyStopping", '
         '"init_args": {{"monitor": "val/judged", "mode": "max"}}}}]'],
        "EarlyStopping(monitor=val/judged) watches a metric logged only with bootstrap.zero_shot.judge.model"),
    "missing seed tasks": (["--bootstrap.prompt_synthesis.per_round", "2", "--bootstrap.prompt_synthesis.seed_tasks",
                            "{tmp}/no-seeds.jsonl"],
                           "bootstrap.prompt_synthesis.seed_tasks: file {tmp}/no-seeds.jsonl does not exist"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_error_and_writes_nothing(case, tmp_path, capsys, tiny_model):
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, '{"prompt": "broken'])
    write_jsonl(tmp_path / "nofield.jsonl", [{"text": "no prompt key"}])
    write_jsonl(tmp_path / "wrongtype.jsonl", [{"prompt": 5}])
    (tmp_path / "empty.jsonl").write_text("\n")
    write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "label": 7}])
    write_jsonl(tmp_path / "dups.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    write_jsonl(tmp_path / "icl.jsonl", [{"id": "x", "prompt": "q", "response": "  "}])
    write_jsonl(tmp_path / "icl-dups.jsonl", [{"id": "x", "prompt": "q", "response": "a"}] * 2)
    (tmp_path / "old.yaml").write_text("bootstrap:\n  icl_pool: rules\n")
    (tmp_path / "old-class.yaml").write_text("trainer:\n  callbacks:\n    - class_path: "
                                             "callbacks.paired_early_stopping.PairedEarlyStopping\n")
    # A run folder from before the identity held every setting (its plan has no version).
    (tmp_path / "out-v1").mkdir()
    (tmp_path / "out-v1" / "plan.json").write_text(json.dumps({"identity": {"model": "m", "seed": 0}, "rounds": [[]],
                                                               "pool": {}}))
    (tmp_path / "out-v1.yaml").write_text(f"bootstrap:\n  out_dir: {tmp_path / 'out-v1'}\n")
    (tmp_path / "fsdp.yaml").write_text("trainer:\n  devices: 2\n  strategy:\n    class_path: "
                                        "tests.helpers.cpu_fsdp.CPUFSDPStrategy\n")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file at all")
    write_jsonl(tmp_path / "icl-two.jsonl", [{"id": f"x{i}", "prompt": "q", "response": "a"} for i in range(2)])
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "empty-model" / "config.json").write_text("{}")
    extra, expected = CASES[case]
    out = tmp_path / "out"
    args = tiny_run_args(tiny_model, out, "hf", *[a.format(tmp=tmp_path) for a in extra])
    message = fails(capsys, args)
    assert expected.format(tmp=tmp_path) in message
    # Lightning may have saved its config.yaml by then; no round data or checkpoint may exist.
    assert not list(out.rglob("round_*")) and not list(out.rglob("*.ckpt")), "a bad input left run files behind"
    assert not list(tmp_path.glob(".soft-write-test-*")), "the out_dir check left its test folder behind"


@pytest.mark.slow
def test_bad_input_exit_code_and_message_from_a_real_process(tmp_path, tiny_model):
    out = tmp_path / "out"
    result = run_cli(*tiny_run_args(tiny_model, out, "hf", "--data.prompts", str(tmp_path / "missing.jsonl")))
    assert result.returncode == 2
    assert f"error: data.prompts: file {tmp_path}/missing.jsonl does not exist." in result.stderr
    assert "Traceback" not in result.stderr and "Loading weights" not in result.stderr
    assert not out.exists()


def test_unknown_config_key_is_refused(capsys, tiny_model, tmp_path):
    with pytest.raises(SystemExit):
        main(tiny_run_args(tiny_model, tmp_path, "hf", "--data.prompt_per_round", "3"))
    assert "prompt_per_round" in capsys.readouterr().err


@pytest.mark.slow
def test_out_dir_of_another_run_is_refused_unless_resumed(tmp_path, tiny_model, trained_run, capsys):
    out = tmp_path / "out"
    shutil.copytree(trained_run, out)  # the session's finished run, and what it printed
    # A run reads clean: before its first own line only Lightning's device lines and the seed line.
    before = (trained_run.parent / "cli.stderr").read_text().split("[soft]", 1)[0].splitlines()
    noise = [line for line in before if line.strip() and not re.match(r"(\[rank: \d+\] )?Seed set to \d+$|"
                                                                      r"(GPU|TPU|HPU) available: ", line)]
    assert not noise, noise
    message = fails(capsys, trained_run_args(tiny_model, out))
    assert f"bootstrap.out_dir: {out} already holds a run; resume it with --ckpt_path last" in message
    other = fails(capsys, trained_run_args(tiny_model, out, "--bootstrap.seed", "7", "--ckpt_path", "last"))
    assert "holds a different run (bootstrap.seed changed since it started)" in other
    # `make demo` again: the same settings with --ckpt_path last show the finished run and exit 0.
    again = run_cli(*trained_run_args(tiny_model, out, "--ckpt_path", "last"))
    assert again.returncode == 0, again.stderr[-2000:]
    shown = again.stdout + again.stderr
    assert "per-round summary" in shown and f"report {out}` writes {out}/report.html" in shown
    # Each rank's share samples with a seed of its own: another number of ranks makes other data.
    # Refused before a second rank is launched.
    ranks = run_cli(*trained_run_args(tiny_model, out, "--ckpt_path", "last", "--trainer.devices", "2",
                                      "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"), timeout=300)
    assert ranks.returncode == 2 and "holds a different run (trainer.world_size changed since it started)" in \
        ranks.stderr and "Initializing distributed" not in ranks.stderr, ranks.stderr[-2000:]


PARSER_CASES = {  # refused by jsonargparse from the types of the constructor arguments
    "zero rounds": (["--bootstrap.rounds", "0"], 'Parser key "bootstrap.rounds"', "0 does not conform to restriction v>0"),
    "unknown scorer": (["--bootstrap.within_round.scorer", "ppl"], "bootstrap.within_round.scorer", "ppl"),
    "unknown sampler": (["--bootstrap.sampler.backend", "gpu"], 'Parser key "bootstrap.sampler.backend"', "gpu"),
    "held-out share of 1": (["--data.val_holdout", "1"], 'Parser key "data.val_holdout"', "v<1"),
    "top_p above 1": (["--bootstrap.sampling.top_p", "1.5"], 'Parser key "bootstrap.sampling.top_p"', "1.5"),
    "no new tokens": (["--bootstrap.sampling.max_new_tokens", "0"], "bootstrap.sampling.max_new_tokens", "v>0"),
    "negative temperature": (["--bootstrap.sampling.temperature", "-1"], "bootstrap.sampling.temperature", "v>=0"),
}


@pytest.mark.parametrize("case", list(PARSER_CASES))
def test_out_of_range_values_are_refused_by_the_parser(case, tmp_path, capsys, tiny_model):
    extra, key, detail = PARSER_CASES[case]
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_run_args(tiny_model, tmp_path / "out", "hf", *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert key in err and detail in err, err[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_round_that_keeps_nothing_names_the_drop_reasons_and_their_settings(tmp_path, capsys, tiny_model):
    """Every answer of the tiny model is shorter than an absurd min_chars: the run stops at the
    round's training with the reasons counted and the setting behind them, not a traceback."""
    message = fails(capsys, tiny_run_args(tiny_model, tmp_path / "out", "hf", "--bootstrap.filters.min_chars", "100000"))
    assert "round 0 kept no trainable example of its 6 answers: 6 too_short (bootstrap.filters.min_chars)" in message


@pytest.mark.slow
def test_a_library_error_mid_run_is_one_sentence_and_its_traceback_is_kept(tmp_path, capsys, tiny_model):
    """A starting adapter whose weights file is not safetensors: peft's loader raises after the
    run has started. One sentence names the phase, the error and the likely settings; the full
    traceback is in out_dir/error.log; the exit code is 1."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    (adapter / "adapter_model.safetensors").write_bytes(b"not safetensors")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_run_args(tiny_model, out, "hf", "--model.adapter", str(adapter)))
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith("error: starting up (loading the model, its adapter and the data) "
                                                   "failed with "), lines
    assert "model.adapter" in lines[0] and f"{out}/error.log" in lines[0]
    assert "Traceback (most recent call last)" in (out / "error.log").read_text()

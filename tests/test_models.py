"""Model sources: short name, .gguf file, HF folder, hub id; and the `validate` subcommand."""

import json
from pathlib import Path

import pytest

from soft_lightning.models.source import SHORT_NAMES, _packaged_file, check_model_source, resolve_model
from soft_lightning.utils.errors import ConfigError
from tests.helpers.cli import ROOT, run_cli


def test_short_name_and_its_gguf_file_resolve_to_one_converted_folder(smollm2_dir):
    gguf = _packaged_file(*SHORT_NAMES["smollm2-135m-instruct"])
    assert resolve_model(str(gguf)) == smollm2_dir
    config = json.loads((Path(smollm2_dir) / "config.json").read_text())
    assert "quantization_config" not in config, "vLLM would try to re-quantise the dequantised weights"
    assert config["model_type"] == "llama"
    assert (Path(smollm2_dir) / "model.safetensors").is_file()


def test_folder_and_hub_id_pass_through(tiny_model):
    assert resolve_model(tiny_model) == str(Path(tiny_model).resolve())
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("bad", ["./missing-model", "/nowhere/model.gguf", "just-a-word"])
def test_unknown_sources_are_refused_without_loading(bad):
    with pytest.raises(ConfigError, match="model.model_name_or_path"):
        check_model_source(bad)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        check_model_source(str(tmp_path))


@pytest.mark.slow
def test_validate_subcommand_reports_mc_accuracy(tiny_model, tmp_path):
    result = run_cli(
        "validate", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--model.model_name_or_path", tiny_model, "--model.lora_r", "8",
        "--data.val_path", "demo", "--data.val_limit", "8", "--bootstrap.out_dir", str(tmp_path / "store"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/mc_acc" in result.stdout
    assert not list((tmp_path / "store").glob("round_*")) and not (tmp_path / "store" / "plan.json").exists(), \
        "validate must not plan or generate rounds"


def test_the_merged_copy_is_sized_from_the_checkpoint_s_shapes_in_the_run_s_dtype(tiny_model):
    """Not from the packed 4-bit training weights (a quarter of the size)."""
    from transformers import AutoModelForCausalLM

    from soft_lightning.models.source import checkpoint_bytes

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    numel = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    tied = model.config.tie_word_embeddings and model.get_output_embeddings() is not None
    if tied:  # the checkpoint stores a tied head once
        numel -= model.get_output_embeddings().weight.numel()
    assert checkpoint_bytes(tiny_model, "bfloat16") == 2 * numel
    assert checkpoint_bytes(tiny_model, "float32") == 4 * numel
    assert checkpoint_bytes("org/hub-id", "bfloat16") is None

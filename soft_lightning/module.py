"""The LightningModule: a causal LM loaded in 4-bit (QLoRA) with a peft LoRA adapter.

It knows nothing of rounds or files: it trains on the batches it is given (loss on response
tokens only) and scores multiple-choice items in validation.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torchmetrics import MeanMetric

from soft_lightning.errors import ConfigError
from soft_lightning.evaluation import labelled_logprobs, pick_choices, response_loss
from soft_lightning.models import check_model_source, resolve_model

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class SoftModule(L.LightningModule):
    """QLoRA policy model.

    Args:
        model_name_or_path: HF folder, `.gguf` file, short name (`smollm2-135m-instruct`) or hub id.
        quantization: `nf4` (4-bit NormalFloat, QLoRA) or `none` (full-precision base, debugging).
        compute_dtype: dtype of the 4-bit matmuls and of the unquantised base.
        double_quant: quantise the quantisation constants too (QLoRA's double quantisation).
        lora_r, lora_alpha, lora_dropout: LoRA shape (Dromedary-2 used r=64, alpha=16, dropout 0).
        target_modules: `all-linear` or a list of module names.
        optimizer: `adamw` (torch), or bitsandbytes `paged_adamw_8bit` / `paged_adamw_32bit` (CUDA).
        warmup_steps: linear warmup, then cosine decay to `min_lr_ratio` over the whole fit.
        gradient_checkpointing: trade compute for activation memory (worth it on GPUs for 7B).
        trust_remote_code: run model code shipped with a checkpoint (off unless you trust it).
        adapter: start from a saved LoRA adapter (e.g. `runs/x/round_1/adapter` or `runs/x/best/adapter`)
            instead of a fresh one; `validate` then scores that round.
    """

    def __init__(
        self,
        model_name_or_path: str = "smollm2-135m-instruct",
        quantization: Literal["nf4", "none"] = "nf4",
        compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
        double_quant: bool = True,
        lora_r: int = 64,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        target_modules: str | list[str] = "all-linear",
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 10,
        min_lr_ratio: float = 0.1,
        optimizer: Literal["adamw", "paged_adamw_8bit", "paged_adamw_32bit"] = "adamw",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        adapter: str | None = None,
    ):
        super().__init__()
        if lora_r < 1:
            raise ConfigError(f"model.lora_r must be a positive integer, got {lora_r}.")
        check_model_source(model_name_or_path)
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"model.adapter: {adapter} is not a PEFT adapter folder (no adapter_config.json).")
        self.save_hyperparameters()
        self.model = None
        # Accuracy over items, synced across ranks by torchmetrics.
        self.mc_acc, self.mc_acc_norm = MeanMetric(), MeanMetric()
        self._total_steps: int | None = None

    @cached_property
    def source(self) -> str:
        """The HF folder (or hub id) vLLM and peft load; a `.gguf` is converted once on first use."""
        return resolve_model(self.hparams.model_name_or_path)

    def setup(self, stage: str) -> None:
        if self.hparams.optimizer != "adamw" and self.trainer.strategy.root_device.type != "cuda":
            raise ConfigError(
                f"model.optimizer={self.hparams.optimizer} needs a CUDA device (bitsandbytes paged "
                "optimizers); use model.optimizer=adamw on this machine."
            )

    def configure_model(self) -> None:
        """Load the base + LoRA here (not in __init__) so strategies like FSDP can shard it."""
        if self.model is not None:
            return
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        hp = self.hparams
        dtype = DTYPES[hp.compute_dtype]
        kwargs = {"dtype": dtype, "trust_remote_code": hp.trust_remote_code}
        if hp.quantization == "nf4":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=hp.double_quant,
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_quant_storage=dtype,  # lets FSDP shard the packed weights like the others
            )
        base = AutoModelForCausalLM.from_pretrained(self.source, **kwargs)
        if hp.quantization == "nf4":
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=hp.gradient_checkpointing)
        elif hp.gradient_checkpointing:
            base.gradient_checkpointing_enable()
        if hp.adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(base, hp.adapter, is_trainable=True)
        else:
            config = LoraConfig(
                r=hp.lora_r,
                lora_alpha=hp.lora_alpha,
                lora_dropout=hp.lora_dropout,
                target_modules=hp.target_modules,
                task_type="CAUSAL_LM",
            )
            self.model = get_peft_model(base, config)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps modes as found

    def forward(self, input_ids, attention_mask, labels):
        """Mean cross-entropy over the response tokens (labels -100 elsewhere)."""
        return response_loss(self.model, input_ids, attention_mask, labels)

    def training_step(self, batch, batch_idx):
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"])
        tokens = int(batch["attention_mask"].sum())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["input_ids"]))
        self.log("train/tokens", float(tokens), reduce_fx="sum", on_step=False, on_epoch=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        # bf16-true precision casts metric states with the module; counts must stay exact.
        for metric in (self.mc_acc, self.mc_acc_norm):
            metric.set_dtype(torch.float64)

    def validation_step(self, batch, batch_idx):
        """Multiple-choice items (`item_index` in the batch) or held-out generated pairs (loss)."""
        if "item_index" not in batch:
            loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"])
            self.log("val/loss", loss, batch_size=len(batch["input_ids"]), sync_dist=True)
            return
        scores = labelled_logprobs(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0].cpu()
        n_items = len(batch["item_label"])
        labels = batch["item_label"].cpu()
        item_index = batch["item_index"].cpu()
        acc = pick_choices(scores, item_index, n_items) == labels
        acc_norm = pick_choices(scores, item_index, n_items, norm=batch["choice_chars"].cpu().float()) == labels
        self.mc_acc.update(acc.float())
        self.mc_acc_norm.update(acc_norm.float())
        self.log("val/mc_acc", self.mc_acc, batch_size=n_items, prog_bar=True)
        self.log("val/mc_acc_norm", self.mc_acc_norm, batch_size=n_items)

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        else:
            import bitsandbytes as bnb

            cls = bnb.optim.PagedAdamW8bit if hp.optimizer == "paged_adamw_8bit" else bnb.optim.PagedAdamW32bit
            opt = cls(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self) -> None:
        # The horizon is known only once the first round's dataloader exists; before that the
        # schedule is in warmup, which does not depend on it.
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))

    def lr_factor(self, step: int) -> float:
        hp = self.hparams
        if step < hp.warmup_steps:
            return (step + 1) / (hp.warmup_steps + 1)
        total = self._total_steps or (step + 1)
        progress = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
        return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def gather_adapter(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the full LoRA weights gathered from the shards (every rank must call this;
        rank 0 gets them, the others an empty dict). Elsewhere None: peft reads the local model."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if not isinstance(strategy, FSDPStrategy):
            return None
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT, config):
            full = strategy.model.state_dict()
        # The wrapped LightningModule holds the PeftModel as `model`; peft's names start below it.
        return {k.removeprefix("model."): v for k, v in full.items() if "lora_" in k}

    def save_adapter(self, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the LoRA adapter as safetensors, loadable by `PeftModel.from_pretrained` and vLLM."""
        self.model.save_pretrained(str(directory), safe_serialization=True, state_dict=state)

    def state_dict(self, *args, **kwargs):
        # Checkpoints hold only the trainable LoRA weights; the frozen base reloads from its source.
        full = super().state_dict(*args, **kwargs)
        return {k: v for k, v in full.items() if "lora_" in k}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        result = super().load_state_dict(state_dict, strict=False, **kwargs)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"checkpoint does not match this model's LoRA adapter: missing {missing[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}; was it saved with other model.lora_* settings?"
            )
        return result

"""The LightningModule: a causal LM loaded in 4-bit (QLoRA) with a peft LoRA adapter.

It knows nothing of rounds or files: it trains on the batches it is given (loss on response
tokens only), scores multiple-choice items in validation, and restarts its LR schedule when told
a round starts (`schedule: round`).
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from peft import get_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file
from torchmetrics import CatMetric, MeanMetric
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from soft_lightning.models.likelihood import choice_logprobs, choice_margins, response_loss
from soft_lightning.models.precision import (
    DTYPES,
    ComputeDtype,
    Numerics,
    float32_buffers,
    resolve,
    restore_float32_buffers,
)
from soft_lightning.models.source import check_model_source, resolve_model
from soft_lightning.sampler.base import Policy
from soft_lightning.signals.multiple_choice import item_choice_scores
from soft_lightning.utils.config_types import ShareBelowOne
from soft_lightning.utils.errors import ConfigError

FSDP_PART = "_fsdp_wrapped_module."  # what FSDP puts into a parameter's name at every wrapped module


def keep_4bit_weights_unpacked(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights at its first
    no-grad eval forward (generation, validation) and from then on computes with a kernel that
    has no autograd support: training after any generation got no gradient through the frozen
    base, and a resumed process (no generation before its first step) trained differently. The
    training model keeps the layout that trains correctly."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


@contextmanager
def float32_default_dtype():
    """Load the base as a process outside Lightning would. Lightning's `bf16-true` makes bf16
    torch's default dtype while `configure_model` runs. bitsandbytes (0.50) builds its 4-bit code
    table in the default dtype and caches the first one for the whole process; the quantiser's bin
    edges come from it. So a training process quantised the base with bf16-rounded edges and a
    spawned sampler with float32 ones (0.9% of the tiny model's packed bytes differed), and every
    later load in a process followed whichever came first. `from_pretrained` gets its dtype
    explicitly, so nothing else changes."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def check_optimizer(optimizer: str, strategy) -> None:
    """bitsandbytes' optimizers under FSDP, refused (the CLI asks before any rank starts): their
    quantisation state is a nested dict that torch's sharded optimizer-state gather compares across
    ranks with `==` (which raises for a LoRA tensor split between shards), and a resume does not
    re-split it per rank (the bitsandbytes issues are open as of 0.50)."""
    if optimizer != "adamw" and isinstance(strategy, FSDPStrategy):
        raise ConfigError(
            f"model.optimizer={optimizer} cannot be checkpointed under FSDP (bitsandbytes keeps its state in nested "
            "dicts that torch's sharded optimizer-state gather cannot compare or re-split); use model.optimizer=adamw "
            "with FSDP, or trainer.strategy=ddp, which suits 4-bit models that fit one GPU (docs/gpu.md)."
        )


class SoftModule(L.LightningModule):
    """QLoRA policy model.

    Args:
        model_name_or_path: HF folder, `.gguf` file, short name (`smollm2-135m-instruct`) or hub id.
        quantization: `nf4` (4-bit NormalFloat, QLoRA) or `none` (full-precision base, debugging).
        compute_dtype: the run's one dtype: 4-bit matmuls, the unquantised base, generation and
            scoring. `auto` picks it from the device (see soft_lightning/models/precision.py): bf16 where
            the GPU or CPU has native bf16, else float16 on older GPUs and float32 on CPUs.
        double_quant: quantise the quantisation constants too (QLoRA's double quantisation).
        lora_r: LoRA rank (Dromedary-2 used 64).
        lora_alpha: LoRA scale numerator: the update is scaled by lora_alpha / lora_r (Dromedary-2: 16).
        lora_dropout: dropout on the LoRA path, in [0, 1).
        target_modules: `all-linear` or a list of module names.
        optimizer: `adamw` (torch), or bitsandbytes `paged_adamw_8bit` / `paged_adamw_32bit` (CUDA).
        learning_rate: the peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: linear warmup from 0 over this many optimizer steps (each round with
            `schedule: round`), then cosine decay (transformers'
            `get_cosine_with_min_lr_schedule_with_warmup`).
        min_lr_ratio: where the cosine ends, as a share of learning_rate.
        schedule: `round` (default) restarts warmup + cosine every round over that round's steps:
            each round is a fine-tune on fresh data, so the last round learns as much as the
            first. `run` is one warmup + cosine over the whole run (rounds x the steps a full
            round takes), which leaves the late rounds, the ones bootstrapping is about, near
            `min_lr_ratio` x lr.
        gradient_checkpointing: trade compute for activation memory (worth it on GPUs for 7B).
        trust_remote_code: run model code shipped with a checkpoint (off unless you trust it).
        adapter: start from a saved LoRA adapter (e.g. `runs/x/round_1/adapter` or `runs/x/best/adapter`)
            instead of a fresh one; `validate` then scores that round.
    """

    def __init__(
        self,
        model_name_or_path: str = "smollm2-135m-instruct",
        quantization: Literal["nf4", "none"] = "nf4",
        compute_dtype: ComputeDtype = "auto",
        double_quant: bool = True,
        lora_r: PositiveInt = 64,
        lora_alpha: PositiveFloat = 16,
        lora_dropout: ShareBelowOne = 0.0,
        target_modules: str | list[str] = "all-linear",
        learning_rate: PositiveFloat = 2e-4,
        weight_decay: NonNegativeFloat = 0.0,
        warmup_steps: NonNegativeInt = 10,
        min_lr_ratio: ClosedUnitInterval = 0.1,
        schedule: Literal["round", "run"] = "round",
        optimizer: Literal["adamw", "paged_adamw_8bit", "paged_adamw_32bit"] = "adamw",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        adapter: str | None = None,
    ):
        super().__init__()
        check_model_source(model_name_or_path)
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"model.adapter: {adapter} is not a PEFT adapter folder (no adapter_config.json).")
        self.save_hyperparameters()
        self.model = None
        # Synced across ranks by torchmetrics when logged at the end of validation.
        self.mc_acc, self.mc_acc_norm, self.val_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # Mean log-likelihood margin of the right choice over the best wrong one: moves before accuracy does.
        self.mc_margin = MeanMetric()
        # Per multiple-choice item: its position, whether it was right, its margin (gathered by torchmetrics) ...
        self.mc_items = torch.nn.ModuleList([CatMetric(), CatMetric(), CatMetric()])
        # ... and, once validation ends, (item, right?, margin) of every rank's items, in item order.
        self.mc_results: list[tuple[int, bool, float]] = []
        # Optimizer steps of the LR schedule; the BootstrapCallback sets it from the run plan.
        self.schedule_steps = 1
        self.numerics: Numerics | None = None  # resolved in setup() for the trainer's device

    def source(self) -> str:
        """The HF folder (or hub id) vLLM and peft load; a `.gguf` is converted on the first call
        (into a cache folder that later calls and runs reuse)."""
        return resolve_model(self.hparams.model_name_or_path)

    def attached_trainer(self):
        """The trainer, or None outside one (Lightning's `trainer` property raises there)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def resolve_numerics(self) -> Numerics:
        """`compute_dtype` (auto or set) against the trainer's precision and device (CPU, float32
        when no trainer is attached); printed once."""
        if self.numerics is None:
            trainer = self.attached_trainer()
            device = trainer.strategy.root_device.type if trainer is not None else "cpu"
            self.numerics = resolve(self.hparams.compute_dtype, trainer.precision if trainer else None, device,
                                    quantized=self.hparams.quantization == "nf4")
            if trainer is not None:
                n = self.numerics
                rank_zero_info(f"[soft] numerics: {n.dtype}, trainer.precision={n.trainer_precision} ({n.reason})")
        return self.numerics

    def setup(self, stage: str) -> None:
        self.resolve_numerics()
        # Checkpoints hold the adapter only (on_save_checkpoint): the base is missing on load.
        self.strict_loading = False
        check_optimizer(self.hparams.optimizer, self.trainer.strategy)
        if self.hparams.optimizer != "adamw" and self.trainer.strategy.root_device.type != "cuda":
            raise ConfigError(
                f"model.optimizer={self.hparams.optimizer} needs a CUDA device (bitsandbytes paged "
                "optimizers); use model.optimizer=adamw on this machine."
            )

    def policy(self) -> Policy:
        """The weights the run's sampler answers with: the base in the run's dtype on this rank's
        device, and (for a spawned hf sampler) how to rebuild this policy with a saved adapter, in
        the dtype training holds its weights in (`bf16-true` casts them; 32-true and mixed do not)."""
        param = next(p for p in self.parameters() if p.requires_grad)
        dtype, device = self.resolve_numerics().dtype, str(param.device)
        cast = None if param.dtype == torch.float32 else str(param.dtype).removeprefix("torch.")
        hparams = {**self.hparams, "compute_dtype": dtype}
        return Policy(self.source(), dtype, device, self.hparams.lora_r, self.hparams.trust_remote_code,
                      load=partial(type(self).policy_for_sampling, hparams, cast), cast=cast)

    @classmethod
    def policy_for_sampling(cls, hparams: dict, dtype: str | None, device: str, adapter: str | None):
        """The policy model as `configure_model` builds it, with `adapter` (None: the starting
        weights), moved to `device` and cast as Lightning's `bf16-true`/`16-true` precision casts
        the training module (`dtype` None: no cast): for a sampler process that cannot see the
        trained model."""
        # Only the constructor's arguments: LightningCLI adds keys of its own (`_instantiator`).
        kwargs = {k: v for k, v in hparams.items() if k in inspect.signature(cls).parameters}
        module = cls(**{**kwargs, **({"adapter": adapter} if adapter else {})})
        module.configure_model()
        module.to(device=device, **({"dtype": getattr(torch, dtype)} if dtype else {}))
        return module.model

    def configure_model(self) -> None:
        """Load the base + LoRA here (not in __init__) so strategies like FSDP can shard it."""
        if self.model is not None:
            return
        from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        hp = self.hparams
        dtype = DTYPES[self.resolve_numerics().dtype]
        kwargs = {"dtype": dtype, "trust_remote_code": hp.trust_remote_code}
        if hp.quantization == "nf4":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=hp.double_quant,
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_quant_storage=dtype,  # lets FSDP shard the packed weights like the others
            )
        with float32_default_dtype():
            base = AutoModelForCausalLM.from_pretrained(self.source(), **kwargs)
        if hp.quantization == "nf4":
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=hp.gradient_checkpointing)
            keep_4bit_weights_unpacked(base)
        elif hp.gradient_checkpointing:
            base.gradient_checkpointing_enable()
        if hp.adapter:
            self.model = PeftModel.from_pretrained(base, hp.adapter, is_trainable=True)
        else:
            config = LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                                target_modules=hp.target_modules, task_type="CAUSAL_LM")
            self.model = get_peft_model(base, config)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps modes as found
        self.function_buffers = float32_buffers(self.model)

    def to(self, *args, **kwargs):
        """Lightning's `-true` precisions cast the module with `.to(dtype)`: the buffers that define
        the function (RoPE) stay float32, as in the generation copy and vLLM (models/precision.py)."""
        module = super().to(*args, **kwargs)
        if self.model is not None:
            restore_float32_buffers(self.model, self.function_buffers)
        return module

    def forward(self, input_ids, attention_mask, labels):
        """Mean cross-entropy over the response tokens (labels -100 elsewhere)."""
        return response_loss(self.model, input_ids, attention_mask, labels)

    def training_step(self, batch, batch_idx):
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"])
        tokens = int(batch["attention_mask"].sum())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["input_ids"]),
                 sync_dist=True)
        self.log("train/tokens", float(tokens), reduce_fx="sum", on_step=False, on_epoch=True, sync_dist=True)
        return loss

    # ---- validation ---------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        # bf16-true precision casts metric states with the module; counts must stay exact.
        for metric in (self.mc_acc, self.mc_acc_norm, self.mc_margin, self.val_loss, *self.mc_items):
            metric.set_dtype(torch.float64)
        for metric in self.mc_items:
            metric.reset()
        self.mc_results = []

    def validation_step(self, batch, batch_idx):
        """Multiple-choice items (`context_index` in the batch) or held-out generated pairs (loss).
        An uncounted batch (a repeat that keeps the ranks' forward passes alike) runs and is not
        recorded; an empty one (nothing to validate) does nothing on every rank."""
        if not batch:
            return
        if "context_index" not in batch:
            loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"])
            if batch["counted"]:
                self.val_loss.update(loss.detach().double(), weight=len(batch["input_ids"]))
            return
        scores = choice_logprobs(self.model, batch["context_ids"], batch["context_mask"], batch["choice_ids"],
                                 batch["choice_mask"], batch["context_index"]).float().cpu()
        if not batch["counted"]:
            return
        per_item, labels = item_choice_scores(scores, batch), batch["item_label"].tolist()
        chars = batch["choice_chars"].cpu().float().split([len(item) for item in per_item])
        normed = per_item if batch["protocol"] != "likelihood" else [s / n for s, n in zip(per_item, chars)]
        acc = torch.tensor([int(s.argmax()) == label for s, label in zip(per_item, labels)])
        acc_norm = torch.tensor([int(s.argmax()) == label for s, label in zip(normed, labels)])
        margins = choice_margins(per_item, labels)
        self.mc_acc.update(acc.double())
        self.mc_acc_norm.update(acc_norm.double())
        self.mc_margin.update(margins.double())
        for metric, values in zip(self.mc_items, (batch["item_position"], acc, margins)):
            metric.update(values.to(self.device, torch.float64))

    def on_validation_epoch_end(self) -> None:
        """Log what any rank measured. Every rank takes part in the count and in the metrics'
        sync (on the strategy's device, so NCCL accepts it): no collective is left waiting."""
        strategy = self.trainer.strategy
        items = torch.tensor(float(self.mc_items[0].update_count), device=strategy.root_device)
        if strategy.reduce(items, reduce_op="sum") > 0:
            position, right, margin = (metric.compute().cpu() for metric in self.mc_items)
            self.mc_results = sorted(zip(position.long().tolist(), right.bool().tolist(), margin.tolist()))
        for name, metric in (("val/mc_acc", self.mc_acc), ("val/mc_acc_norm", self.mc_acc_norm),
                             ("val/mc_margin", self.mc_margin), ("val/loss", self.val_loss)):
            count = torch.tensor(float(metric.update_count), device=strategy.root_device)
            if strategy.reduce(count, reduce_op="sum") > 0:
                self.log(name, metric, prog_bar=name == "val/mc_acc")
            else:
                metric.reset()

    # ---- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        else:
            import bitsandbytes as bnb

            cls = bnb.optim.PagedAdamW8bit if hp.optimizer == "paged_adamw_8bit" else bnb.optim.PagedAdamW32bit
            opt = cls(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        schedule = self._schedule(opt, self.schedule_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _schedule(self, optimizer, steps: int, done: int = 0):
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, self.hparams.warmup_steps, max(1, steps), min_lr_rate=self.hparams.min_lr_ratio,
            last_epoch=done - 1,
        )

    def start_round(self, steps: int, resumed: bool = False) -> None:
        """Called when a round starts (or resumes) training, with its optimizer steps:
        `schedule: round` restarts warmup + cosine over them, keeping the steps a resumed
        round already took."""
        if self.hparams.schedule != "round":
            return
        config = self.trainer.lr_scheduler_configs[0]
        done = config.scheduler.last_epoch if resumed else 0
        config.scheduler = self._schedule(config.scheduler.optimizer, steps, done)

    # ---- the adapter and checkpoints ----------------------------------------------------------

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trainable LoRA weights under peft's names (those of its adapter files)."""
        trainable = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        return get_peft_model_state_dict(self.model, state_dict=trainable)

    def gather_adapter(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the full LoRA weights gathered from the shards (every rank must call this;
        rank 0 gets them, the others an empty dict). Elsewhere None: the local model has them."""
        trainer = self.attached_trainer()
        strategy = trainer.strategy if trainer is not None else None
        if not isinstance(strategy, FSDPStrategy):
            return None
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        # (Offloading parameters that are on the CPU already would hand back views of storage
        # FSDP frees on resharding: the process crashes copying them.)
        config = FullStateDictConfig(offload_to_cpu=strategy.root_device.type != "cpu", rank0_only=True)
        with FSDP.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT, config):
            full = strategy.model.state_dict()
        if not strategy.is_global_zero:
            return {}
        # FSDP's full state dict has clean names under the wrapped LightningModule (`model.`);
        # peft picks the LoRA entries by the names of the modules as they are now, wrapped
        # (`_fsdp_wrapped_module.` mid-path): hand it the tensors under those names, then clean them.
        wrapped = {n: full["model." + n.replace(FSDP_PART, "")] for n, p in self.model.named_parameters()
                   if p.requires_grad}
        state = get_peft_model_state_dict(self.model, state_dict=wrapped)
        state = {k.replace(FSDP_PART, ""): v for k, v in state.items()}
        if len(state) != len(wrapped) or not wrapped:
            raise RuntimeError(f"gathered {len(state)} of the adapter's {len(wrapped)} LoRA tensors from the FSDP "
                               "shards; refusing to save an incomplete adapter.")
        return state

    def save_adapter(self, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the LoRA adapter (peft's files: adapter_config.json, adapter_model.safetensors),
        loadable by `PeftModel.from_pretrained` and vLLM; an adapter without tensors is refused,
        never written. (Not peft's `save_pretrained`: it picks the tensors again by module names,
        which under FSDP are not the state dict's.)"""
        state = self.adapter_state() if state is None else state
        if not state:
            raise RuntimeError("the LoRA adapter to save holds no tensors; refusing to write an empty adapter.")
        config = copy.copy(self.model.peft_config["default"])
        config.inference_mode = True
        config.save_pretrained(str(directory))
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                  str(Path(directory) / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})

    def adapter_keys(self) -> set[str]:
        """The LoRA weights' names in Lightning's checkpoint (FSDP's wrapping taken out)."""
        return {"model." + n.replace(FSDP_PART, "") for n, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints hold the LoRA weights (and the optimizer), not the frozen 4-bit base, which
        reloads from its source: adapter-sized under every strategy."""
        keep = self.adapter_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Lightning then loads non-strictly (the base is not in the checkpoint), so a checkpoint
        of another adapter is refused here, by its names and (unsharded) shapes. (Under FSDP the
        strategy loads the weights before this hook, non-strictly, and nothing is checked.)"""
        state = checkpoint.get("state_dict")
        if state is None:  # Lightning's FSDP strategy has loaded (and removed) the weights itself
            return
        expected, found = self.adapter_keys(), set(state)
        shapes = {} if isinstance(self.trainer.strategy, FSDPStrategy) else {  # FSDP holds flat shards
            "model." + n: p.shape for n, p in self.model.named_parameters() if p.requires_grad}
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(shape)}" for k, shape in shapes.items()
                 if k in state and state[k].shape != shape]
        if expected != found or wrong:
            raise ConfigError(
                f"the checkpoint's LoRA weights do not match this model's (missing {sorted(expected - found)[:2]}, "
                f"unexpected {sorted(found - expected)[:2]}, other shapes {wrong[:1]}): was it saved with other "
                "model.lora_r or model.target_modules? Resume with those, or start a new bootstrap.out_dir."
            )

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clipping by norm under FSDP through the wrapped root (its norm spans every rank's shard;
        Lightning's FSDP precision plugin refuses it otherwise); elsewhere Lightning's own."""
        strategy = self.trainer.strategy
        if isinstance(strategy, FSDPStrategy) and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)



"""`python -m soft_lightning fit|validate --config ...`: LightningCLI plus a `bootstrap:` section.

Links keep one source of truth for values several parts need: rounds x epochs_per_round sets
the trainer's max_epochs, `bootstrap.prompt_synthesis.per_round` how many prompts a round
draws from the file, `bootstrap.out_dir` is where the DataModule reads rounds and where the
trainer logs, the model's source names the tokenizer, and one seed drives the pool order, ICL
draws and sampling.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path

from jsonargparse import CLI
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from soft_lightning.callbacks.bootstrap import BootstrapCallback, resumable_checkpoint
from soft_lightning.models import precision
from soft_lightning.models.source import config_model_type
from soft_lightning.renamed import check_renamed
from soft_lightning.rounds.preflight import check_out_dir
from soft_lightning.sampler import vllm_lora_rank
from soft_lightning.training.data import SoftDataModule
from soft_lightning.training.module import SoftModule, check_optimizer
from soft_lightning.utils.errors import ConfigError

# Subcommands beside LightningCLI's fit/validate, each a typed function on a run's out_dir.
RUN_COMMANDS = {
    "evaluate": "soft_lightning.commands.evaluate:evaluate",  # lm-evaluation-harness scores of the rounds
    "export": "soft_lightning.commands.export:export",  # a round merged into a model folder
    "report": "soft_lightning.commands.report:build_report",  # report.html with answers side by side
    "score": "soft_lightning.commands.score:score",  # every quality signal of any answers file
}


class SoftCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(BootstrapCallback, "bootstrap")
        # (`int`: a range-checked value must reach plain-int targets as an int, or the saved
        # config.yaml cannot be written.)
        parser.link_arguments(("bootstrap.rounds", "bootstrap.epochs_per_round"), "trainer.max_epochs",
                              compute_fn=lambda rounds, epochs: int(rounds * epochs))
        # Validate once per round, so EarlyStopping's patience counts rounds.
        parser.link_arguments("bootstrap.epochs_per_round", "trainer.check_val_every_n_epoch", compute_fn=int)
        for key in ("rounds", "epochs_per_round", "seed", "regenerate"):
            parser.link_arguments(f"bootstrap.{key}", f"data.{key}")
        parser.link_arguments("bootstrap.out_dir", "trainer.default_root_dir")
        # Synthesized prompts take the place of file prompts in each round.
        parser.link_arguments("bootstrap.prompt_synthesis.per_round", "data.synthesized_per_round", compute_fn=int)
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        # The DataModule picks each epoch's round when Lightning asks for the dataloader.
        parser.set_defaults({"trainer.reload_dataloaders_every_n_epochs": 1})

    def before_instantiate_classes(self) -> None:
        # Checks that span sections; they fail before anything is built.
        config = self.config.get(self.subcommand, self.config)
        check_out_dir(config.bootstrap.out_dir)
        # trainer.precision left unset follows model.compute_dtype (auto: picked for the device);
        # corrupting pairs are refused here, before anything loads.
        device = precision.device_of(config.trainer.accelerator)
        config.trainer.precision = precision.resolve(
            config.model.compute_dtype, config.trainer.precision, device,
            quantized=config.model.quantization == "nf4",
            model_type=config_model_type(config.model.model_name_or_path) if device == "cuda" else None,
        ).trainer_precision
        if config.bootstrap.sampler.backend == "vllm":
            vllm_lora_rank(config.model.lora_r)
        if "weights_only" in config and config.weights_only is None:
            # Checkpoints hold only tensors and plain values: load them without unpickling code.
            config.weights_only = True
        ckpt = config.get("ckpt_path")
        if ckpt and ckpt not in ("last", "best", "hpc") and not Path(ckpt).is_file():
            raise ConfigError(f"--ckpt_path: {ckpt} does not exist; pass an existing .ckpt file or 'last'.")

    def instantiate_trainer(self, **kwargs):
        """Keep checkpoints in <bootstrap.out_dir>/checkpoints (unless a dirpath is given), where
        the BootstrapCallback writes its round-end and preemption checkpoints (`last-*.ckpt`), so
        `--ckpt_path last` finds them: Lightning's rule (the newest `last*.ckpt` in ModelCheckpoint's
        folders), less the checkpoints taken after an epoch's last batch (`resumable_checkpoint`)."""
        trainer = super().instantiate_trainer(**kwargs)
        config = self.config.get(self.subcommand, self.config)
        check_optimizer(config.model.optimizer, trainer.strategy)  # before any rank is launched
        bootstrap = next(cb for cb in trainer.callbacks if isinstance(cb, BootstrapCallback))
        ckpt_path = config.get("ckpt_path")
        bootstrap.resume_requested = bool(ckpt_path)  # `last` also resumes a run killed before its first checkpoint
        folder = bootstrap.run.store.round_end_checkpoint.parent.resolve()
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str(folder)
        folders = [Path(cb.dirpath).resolve() for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        if ckpt_path == "last" and folder not in folders:
            raise ConfigError(f"--ckpt_path last looks for the run's checkpoints in ModelCheckpoint's folders, but "
                              f"none writes to {folder} (a ModelCheckpoint dirpath elsewhere, or "
                              "trainer.enable_checkpointing false); leave one's dirpath unset or pass a .ckpt path.")
        # Before any rank is launched or model loaded (setup checks again, holding out_dir's lock).
        bootstrap.run.store.check_run(bootstrap.run.identity(trainer, self.model, self.datamodule), bool(ckpt_path))
        if ckpt_path == "last":  # Lightning's rule, less the checkpoints it cannot resume into rounds
            chosen = resumable_checkpoint(folders)
            self.config_init[self.subcommand]["ckpt_path"] = str(chosen) if chosen else None
        return trainer


def main(args: list[str] | None = None) -> None:
    from_argv = args is None  # (LightningCLI warns when it is handed arguments and sys.argv has some too)
    args = sys.argv[1:] if args is None else args
    try:
        if any(a.split("=")[0] == "--trainer.default_root_dir" for a in args):
            raise ConfigError("trainer.default_root_dir follows bootstrap.out_dir (the run's folder, where Lightning's "
                              "logs and checkpoints go too); set --bootstrap.out_dir instead.")
        check_renamed(args)
        if args[:1] and args[0] in RUN_COMMANDS:  # commands on a finished run: no Trainer involved
            module, function = RUN_COMMANDS[args[0]].split(":")
            rest = args[1:]
            if args[0] == "score" and rest[:1] and not rest[0].startswith("-"):  # `score ANSWERS.jsonl`
                rest = ["--answers", *rest]
            CLI(getattr(importlib.import_module(module), function), args=rest,
                prog=f"python -m soft_lightning {args[0]}")
            return
        SoftCLI(SoftModule, SoftDataModule, args=None if from_argv else args, auto_configure_optimizers=False,
                save_config_kwargs={"overwrite": True})
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:  # a library's error escaped a phase of the run: one sentence, the traceback kept
        context = getattr(err, "soft_context", None)
        if context is None or os.environ.get("SOFT_LIGHTNING_TRACEBACK"):
            raise
        phase, keys, log = context
        first = (str(err).strip().splitlines() or [""])[0][:300]
        kept = f"the full traceback is in {log}" if log else "the traceback could not be written to the run's folder"
        print(f"error: {phase} failed with {type(err).__name__}: {first} (the setting most likely behind it: {keys}); "
              f"{kept} (SOFT_LIGHTNING_TRACEBACK=1 prints it here); what the run wrote is kept, and after the fix "
              "--ckpt_path last resumes it.", file=sys.stderr)
        raise SystemExit(1) from None
    except SIGTERMException:  # a preemption: what was written is kept, a checkpoint was saved
        print("[soft] stopped by SIGTERM; run the same command with --ckpt_path last to continue.", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None

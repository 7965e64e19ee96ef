"""`python -m soft_lightning fit|validate --config ...`: LightningCLI plus a `bootstrap:` section.

Links keep one source of truth for values several parts need: rounds x epochs_per_round sets
the trainer's max_epochs, the model's source names the tokenizer, and one seed drives the pool
shuffle, ICL draws and sampling.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from callbacks.bootstrap import BootstrapCallback
from soft_lightning.data import SoftDataModule
from soft_lightning.errors import ConfigError
from soft_lightning.module import SoftModule
from soft_lightning.sampler import vllm_lora_rank


class SoftCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(BootstrapCallback, "bootstrap")
        parser.link_arguments(
            ("bootstrap.rounds", "bootstrap.epochs_per_round"), "trainer.max_epochs",
            compute_fn=lambda rounds, epochs: rounds * epochs,
        )
        parser.link_arguments("bootstrap.epochs_per_round", "trainer.reload_dataloaders_every_n_epochs")
        # Validate once per round, so EarlyStopping's patience counts rounds.
        parser.link_arguments("bootstrap.epochs_per_round", "trainer.check_val_every_n_epoch")
        parser.link_arguments("bootstrap.rounds", "data.rounds")
        parser.link_arguments("bootstrap.seed", "data.seed")
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")

    def before_instantiate_classes(self) -> None:
        # The one check that needs two sections; it must fail before anything is built.
        config = self.config.get(self.subcommand, self.config)
        if config.bootstrap.sampler == "vllm":
            vllm_lora_rank(config.model.lora_r)


def main(args: list[str] | None = None) -> None:
    try:
        SoftCLI(SoftModule, SoftDataModule, args=args, auto_configure_optimizers=False,
                save_config_kwargs={"overwrite": True})
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

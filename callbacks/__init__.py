"""Lightning callbacks that orchestrate SOFT around the trainer (no model math here); this folder
installs as `soft_lightning.callbacks`."""

from soft_lightning.callbacks.bootstrap import BootstrapCallback
from soft_lightning.callbacks.paired_early_stopping import PairedEarlyStopping

__all__ = ["BootstrapCallback", "PairedEarlyStopping"]

"""Lightning callbacks that orchestrate SOFT around the trainer (no model math here)."""

from soft_lightning.callbacks.bootstrap import BootstrapCallback

__all__ = ["BootstrapCallback"]

"""Early stopping that acts on evidence, not noise: on a few hundred validation items a round that
looks a point or two worse than the best is usually the same model, and Lightning's EarlyStopping
would stop on it. Here a validation counts as worse only when an exact McNemar test on the same
multiple-choice items says it is worse than the run's best round (p < alpha)."""

from __future__ import annotations

from typing import Literal

from jsonargparse.typing import OpenUnitInterval, PositiveInt
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

from soft_lightning.rounds.run import SoftRun
from soft_lightning.signals import stats


class PairedEarlyStopping(Callback):
    """Stop after `patience` validations in a row significantly worse than the best round.

    The best round is the run's own (the store's `best/`, picked by the ModelCheckpoint's monitor
    or, without one, by this callback's), so stopping, checkpoints and the report agree on it.

    Args:
        patience: validations (rounds, with one epoch per round) in a row that must be
            significantly worse than the best before training stops.
        alpha: significance level of the paired test.
        monitor: the metric that picks the best round when no ModelCheckpoint monitors one.
        mode: `max` or `min` for `monitor`.
    """

    def __init__(self, patience: PositiveInt = 1, alpha: OpenUnitInterval = 0.05, monitor: str = "val/mc_acc",
                 mode: Literal["max", "min"] = "max"):
        self.patience, self.alpha, self.monitor, self.mode = patience, alpha, monitor, mode
        self.wait = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        correct = [int(right) for _, right, _ in pl_module.mc_results]  # gathered: the same on every rank
        if trainer.sanity_checking or not correct:
            return
        store = SoftRun.of(trainer).store  # best/ holds the earlier rounds' best: this round ends later
        best = store.best_round()
        reference = (store.read_manifest(best).get("validation") or {}).get("correct") if best is not None else None
        if not reference or len(reference) != len(correct):  # nothing to compare with (yet)
            self.wait = 0
            return
        test = stats.paired(correct, reference)
        worse = test["only_reference"] > test["only_this"] and test["p"] < self.alpha
        self.wait = self.wait + 1 if worse else 0
        rank_zero_info(f"[soft] validation vs the best round ({best}): +{test['only_this']}/-{test['only_reference']} "
                       f"items, McNemar p={test['p']:.3f}: {'worse' if worse else 'not significantly worse'}"
                       f" ({self.wait}/{self.patience})")
        if self.wait >= self.patience:
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"wait": self.wait}

    def load_state_dict(self, state_dict: dict) -> None:
        self.wait = state_dict["wait"]

"""Early stopping on a watched loss (the validation loss; the training loss where nothing is held
out), shared by every supervised loop of stage 2: the pixel MLPs (one per member), the
classification heads and fine-tuning."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

from torch import nn


class EarlyStopping:
    """Keeps the state (``snapshot()``) from the epoch with the lowest validation loss.

    ``update(epoch, loss)`` after each epoch returns True once ``patience`` epochs have passed
    without an improvement of more than 1e-6, but never before ``min_epochs`` epochs (the
    reference's "early stopping starts at epoch 40"). A loss of ``inf`` counts as an improvement, so
    then the latest state is kept. ``restore()`` hands the kept state to ``load`` and returns
    ``{"best_epoch", "best_val_loss", "epochs"}`` (``best_val_loss``: the watched loss).
    """

    def __init__(self, snapshot: Callable[[], dict], load: Callable[[dict], object], patience: int,
                 min_epochs: int = 0):
        self.snapshot, self.load, self.patience, self.min_epochs = snapshot, load, patience, min_epochs
        self.best_loss, self.best_epoch, self.epochs = math.inf, -1, 0
        self._state = snapshot()

    @classmethod
    def of_module(cls, module: nn.Module, patience: int, min_epochs: int = 0) -> EarlyStopping:
        return cls(lambda: copy.deepcopy(module.state_dict()), module.load_state_dict,
                   patience, min_epochs)

    def update(self, epoch: int, loss: float) -> bool:
        self.epochs = epoch + 1
        if loss < self.best_loss - 1e-6 or math.isinf(loss):
            self.best_loss, self.best_epoch, self._state = loss, epoch, self.snapshot()
            return False
        return epoch + 1 >= self.min_epochs and epoch - self.best_epoch >= self.patience

    def restore(self) -> dict:
        self.load(self._state)
        return {"best_epoch": self.best_epoch, "best_val_loss": self.best_loss,
                "epochs": self.epochs}


class StoppingGroup:
    """Early stopping of members trained in lockstep (one batched pass for all): each keeps its own
    best state and stops counting on its own; ``update(epoch, losses)`` (one loss per member)
    returns True once none is active, and ``restore()`` gives every member its kept state back,
    returning one record per member."""

    def __init__(self, stoppers: list[EarlyStopping]):
        self.stoppers, self.active = stoppers, [True] * len(stoppers)

    def update(self, epoch: int, losses: list[float]) -> bool:
        for k, stopper in enumerate(self.stoppers):
            if self.active[k] and stopper.update(epoch, losses[k]):
                self.active[k] = False
        return not any(self.active)

    def restore(self) -> list[dict]:
        return [s.restore() for s in self.stoppers]

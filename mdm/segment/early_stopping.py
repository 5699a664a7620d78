"""Early stopping on a validation loss, shared by the pixel MLPs and fine-tuning."""

from __future__ import annotations

import copy
import math

from torch import nn


class EarlyStopping:
    """Keeps the weights of ``module`` from the epoch with the lowest validation loss.

    ``update(epoch, loss)`` after each epoch returns True once ``patience`` epochs have passed without an improvement
    of more than 1e-6. A loss of ``inf`` (no validation pixels) counts as an improvement, so then the latest weights
    are kept. ``restore()`` loads the kept weights and returns ``{"best_epoch", "best_val_loss", "epochs"}``.
    """

    def __init__(self, module: nn.Module, patience: int):
        self.module, self.patience = module, patience
        self.best_loss, self.best_epoch, self.epochs = math.inf, -1, 0
        self._state = copy.deepcopy(module.state_dict())

    def update(self, epoch: int, loss: float) -> bool:
        self.epochs = epoch + 1
        if loss < self.best_loss - 1e-6 or math.isinf(loss):
            self.best_loss, self.best_epoch = loss, epoch
            self._state = copy.deepcopy(self.module.state_dict())
            return False
        return epoch - self.best_epoch >= self.patience

    def restore(self) -> dict:
        self.module.load_state_dict(self._state)
        return {"best_epoch": self.best_epoch, "best_val_loss": self.best_loss, "epochs": self.epochs}

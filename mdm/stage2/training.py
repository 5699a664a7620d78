"""The one supervised training loop of stage 2, shared by the pixel-MLP ensemble, the classification
heads and both tasks' fine-tuning: epochs of optimizer steps, each epoch ending with the loss early
stopping watches (the validation loss; the training loss where nothing validates), stopped by an
``EarlyStopping`` (one model) or a ``StoppingGroup`` (members in lockstep), which hands the kept
state back at the end. What an epoch is (which batches, which augmentation, which loss) stays with
the caller."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step on ``loss``: gradients cleared, back-propagated, applied."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def watched(validation: float, training: float | None) -> float:
    """The loss early stopping watches: ``validation``; ``training`` where nothing validates
    (``inf``) and it is given (``None``: no training loss to fall back on, the run keeps its latest
    state)."""
    return training if math.isinf(validation) and training is not None else validation


def fit_epochs(run_epoch: Callable[[int], float | list[float]], stopping, max_epochs: int,
               on_epoch: Callable[[int, float | list[float]], None] | None = None):
    """At most ``max_epochs`` epochs of ``run_epoch(epoch)``, which trains one epoch and returns the
    watched loss (one per member for a ``StoppingGroup``); ``on_epoch(epoch, loss)`` after each (a
    progress bar). Stops when ``stopping.update`` says so; returns ``stopping.restore()``."""
    for epoch in range(max_epochs):
        loss = run_epoch(epoch)
        done = stopping.update(epoch, loss)
        if on_epoch is not None:
            on_epoch(epoch, loss)
        if done:
            break
    return stopping.restore()

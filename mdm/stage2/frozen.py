"""The frozen U-Net every stage-2 feature comes from: hooks on named taps (``UNetModel.taps``), the
input corrupted by the export's objective with a keyed mask or noise (``taps.corrupted``), one
forward pass per timestep under the run's autocast, in the device's preferred memory layout. The
tasks read its outputs their own way: segmentation samples pixels of the block outputs
(``segment.features``), classification pools them (``classify.features``)."""

from __future__ import annotations

import torch

from ..common.devices import autocast, memory_format
from .taps import corrupted


class FrozenUNet:
    """``model`` (a ``UNetModel``, frozen here: eval mode, no gradients, on ``device``) with forward
    hooks on ``taps`` (names, e.g. ``["mid", "d3"]``); ``objective`` corrupts the input; ``dtype``:
    the autocast precision (``None``: fp32)."""

    def __init__(self, model, objective, taps: list[str], device: torch.device,
                 dtype: torch.dtype | None):
        self.device, self.dtype, self.objective = device, dtype, objective
        self.memory_format = memory_format("auto", device)
        self.model = model.to(device, memory_format=self.memory_format).eval().requires_grad_(False)
        self.taps = list(taps)
        self._outputs: dict[str, torch.Tensor] = {}
        modules = self.model.taps()
        self._handles = [
            modules[name].register_forward_hook(self._hook(name)) for name in self.taps]

    def _hook(self, name: str):
        def fn(_module, _inputs, output):
            self._outputs[name] = output
        return fn

    @torch.no_grad()
    def outputs(self, x0: torch.Tensor, keys: torch.Tensor, t: int) -> dict[str, torch.Tensor]:
        """``x0 [B, 3, S, S]`` (on ``device``) corrupted at timestep ``t`` with the keyed mask or
        noise of ``keys [B]``, through the U-Net once: ``{tap: its output [B, C, h, w]}`` in the
        autocast precision."""
        x_t, model_t = corrupted(self.objective, x0, t, keys)
        self._outputs.clear()
        with autocast(self.dtype, self.device):
            self.model(x_t.contiguous(memory_format=self.memory_format), model_t)
        return dict(self._outputs)

    def release(self):
        """Remove this object's hooks and hand back its U-Net (to tap other blocks without loading
        it again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.model

"""The synthetic source's unlabeled pool as a pretraining dataset."""

from __future__ import annotations

import torch

from .synthetic import SyntheticHistology
from .transforms import crop_or_resize


class SyntheticPoolDataset(torch.utils.data.Dataset):
    """``num_images`` pool images (never a labeled or test image) rendered at ``image_size`` and cropped or resized
    to ``crop_size``; an item is ``(index, key)`` -> ``(image [3, S, S], key)``. Rendered images are cached in
    memory (each process or worker renders an image once)."""

    def __init__(self, num_images: int, image_size: int, crop_size: int, crop: str = "random", hflip: bool = True,
                 seed: int = 0):
        self.source = SyntheticHistology(seed=seed, image_size=image_size)
        self.ids = self.source.unlabeled_ids(num_images)
        self.crop_size, self.crop, self.hflip = crop_size, crop, hflip
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: tuple[int, int]):
        index, key = item
        if index not in self._cache:
            self._cache[index] = self.source.render(*self.ids[index])[0]
        image = self._cache[index]
        return crop_or_resize(image, key, self.crop_size, self.crop, self.hflip), key

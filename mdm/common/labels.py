"""Label-map conventions shared by the datasets, the synthetic data, the segmentation stage and the
metrics.

Class maps are ``[H, W]`` int64 class ids with ``IGNORE_INDEX`` for pixels that neither train nor
score. Instance maps are ``[H, W]`` integer arrays, 0 = background and one positive id per object.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def consecutive_ids(instances: np.ndarray) -> tuple[np.ndarray, int]:
    """``(map, K)``: the instance map with its positive ids renumbered ``1..K`` in increasing order
    (0 stays background), as int64. Raises ``ValueError`` on negative ids."""
    instances = np.asarray(instances)
    if instances.size and instances.min() < 0:
        raise ValueError("instance maps must be non-negative (0 = background)")
    ids = np.unique(instances)
    ids = ids[ids > 0]
    out = np.zeros(instances.shape, dtype=np.int64)
    foreground = instances > 0
    out[foreground] = np.searchsorted(ids, instances[foreground]) + 1
    return out, int(ids.size)

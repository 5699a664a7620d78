"""The one rule that chooses where features come from, for every task and every frozen method: each
candidate ``(timestep, block)`` is probed alone by the task's probe (a one-member pixel MLP for
segmentation, a linear head for classification), scored by its best validation loss (lower is
better); the best timestep is the one whose best block scores best, and its ``keep`` best blocks are
kept. Only labeled training images reach a probe, so no test image can reach the choice; the task
writes the result with ``run_folder.save_selection``."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from tqdm.auto import tqdm


def choose_parts(parts: list[tuple[int, Hashable]], probe: Callable[[int, Hashable], float],
                 keep: int = 1, progress: bool = False) -> tuple[int, list, dict[int, dict]]:
    """Probe every ``(timestep, block)`` of ``parts`` in order (``probe(t, block)`` -> its loss);
    returns the best timestep, its ``keep`` best blocks (in the order probed) and every score
    ``{timestep: {block: loss}}``. Ties go to the earlier candidate."""
    scores: dict[int, dict] = {}
    for t, block in tqdm(parts, desc="choosing blocks",
                         disable=None if progress else True, leave=False):
        scores.setdefault(t, {})[block] = probe(t, block)
    best_t = min(scores, key=lambda t: min(scores[t].values()))
    best = sorted(scores[best_t], key=scores[best_t].get)[:keep]
    return best_t, [b for b in scores[best_t] if b in best], scores

"""One writer per pretraining run folder: the main process holds the folder's lock
(``common.io.writing_lock``) for the whole run, so a second ``train.py`` into the same
``train.out_dir`` is refused instead of interleaving its checkpoints and log rows with the first's.
Every process learns the main process's answer, so all stop together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from ..common.errors import DataError
from ..common.io import writing_lock


@contextmanager
def run_lock(run_dir: Path, accelerator: Accelerator) -> Iterator[None]:
    """Hold ``run_dir``'s lock on the main process while the block runs; raise the same
    ``DataError`` on every process when another writer holds it."""
    held, refusal = ExitStack(), [None]
    if accelerator.is_main_process:
        try:
            held.enter_context(writing_lock(Path(run_dir)))
        except DataError as e:
            refusal = [str(e)]
    if accelerator.num_processes > 1:
        broadcast_object_list(refusal)
    if refusal[0] is not None:
        raise DataError(refusal[0])
    with held:
        yield

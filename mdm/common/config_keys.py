"""How a config key is declared (``key``): its default, help line, choices, registries, range and
roles, kept in the dataclass field's metadata, which ``config_checks``, ``config_docs`` and
``keys_with_role`` read.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import field

# in a key's ``registries``: the registry of the study methods of ``bench.task``'s task (its
# ``Task.methods``), or those of every task (a key whose names outside the task are left out rather
# than refused)
TASK_METHODS, ANY_TASK_METHODS = "task methods", "methods of any task"

ROLES = {  # what a key may be besides its value, declared beside it (``key(..., roles=...)``)
    "stage2_data": "a data key only stage 2 reads: it does not decide what pretraining learns",
    "cadence": "how a pretraining run logs, saves and how long it runs, not what a step computes",
    "hardware": "where and how fast a run computes, not what it trains on (a resume may change it)",
    "memory": "memory saved at the same samples per step (a resume may change it)",
    "resumable": "a study folder may be resumed with another value (which runs it holds, where and how fast)",
}


def key(default, help: str, *, choices: tuple = (), registries: tuple = (), positive: bool = False,
        not_negative: bool = False, roles: tuple[str, ...] = ()):
    """A config key: ``default`` (lists and sections are copied for every instance), ``help`` (its
    line in the README's table), ``choices`` (the values it may take, when it takes names),
    ``registries`` (or: the ``common.registry`` registries whose names it takes; a list key takes
    several), ``positive`` / ``not_negative`` (a finite number above 0 / at least 0), ``roles``
    (what else the key is, from ``ROLES``: read by ``keys_with_role``)."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown key roles {sorted(unknown)} (known: {', '.join(ROLES)})")
    meta = {"help": help, "choices": tuple(choices), "registries": tuple(registries),
            "roles": tuple(roles),
            "range": "positive" if positive else "not_negative" if not_negative else None}
    if isinstance(default, list) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)

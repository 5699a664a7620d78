"""Named points where a test can interrupt a run, to check that a rerun recovers
(``tests/test_faults.py``).

``reached(name)`` calls ``hook(name)``, which does nothing; a test replaces ``hook`` with one that
raises at the point it wants to kill the run at. A test of several processes (``torchrun``), which
it cannot patch, sets ``MDM_KILL_AT=<name>:<n>`` instead: the process that reaches ``name`` the
``n``-th time kills itself with SIGKILL, as a node failure or an out-of-memory kill would.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def hook(name: str) -> None:
    """Replaced by tests; never raises in a real run."""


def reached(name: str) -> None:
    hook(name)
    point, _, count = os.environ.get("MDM_KILL_AT", "").rpartition(":")
    if point == name:
        _seen[name] = _seen.get(name, 0) + 1
        if _seen[name] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)

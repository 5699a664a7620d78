"""Named points where a test can interrupt a run, to check that a rerun recovers (``tests/test_faults.py``).

``reached(name)`` calls ``hook(name)``, which does nothing; a test replaces ``hook`` with one that raises at the
point it wants to kill the run at.
"""

from __future__ import annotations


def hook(name: str) -> None:
    """Replaced by tests; never raises in a real run."""


def reached(name: str) -> None:
    hook(name)

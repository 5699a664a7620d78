"""``python -m mdm.demo``: what ``make demo`` runs (see ``mdm.cli._demo``)."""

from .cli import demo_main as main

if __name__ == "__main__":
    raise SystemExit(main())

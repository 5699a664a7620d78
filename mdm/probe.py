"""``python -m mdm.probe``: image classification on frozen features (see ``mdm.classify.run``)."""

from .cli import probe_main as main

if __name__ == "__main__":
    raise SystemExit(main())

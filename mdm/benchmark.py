"""``python -m mdm.benchmark``: the label-efficiency study (see ``mdm.study.sweep``)."""

from .cli import bench_main as main

if __name__ == "__main__":
    raise SystemExit(main())

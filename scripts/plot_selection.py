"""The block x timestep heatmap of a finished study at any label fraction (the study itself draws the lowest):
each frozen method's sweep scores averaged over seeds, the chosen pairs outlined.

    python scripts/plot_selection.py runs/bench_cls_synthetic 1.0 docs/cls_synthetic_block_selection_f1.png \
        mdm-linear,ddpm-linear,mae-linear,random-linear     # (optional) these methods only, in this order
"""

import json
import sys
from pathlib import Path

from mdm.study.report import plot_selections


def main(study: str, fraction: float, out: str, methods: list[str] | None = None) -> None:
    runs = Path(study) / "runs"
    selections = {}
    for method in methods or sorted(p.name for p in runs.iterdir() if p.is_dir()):
        files = sorted(runs.glob(f"{method}/f{fraction:g}_s*/metrics.json"))
        found = [json.loads(f.read_text()).get("selection") for f in files]
        if any(found):
            selections[method] = [s for s in found if s]
    if not selections:
        raise SystemExit(f"{study}: no run at fraction {fraction:g} chose its features on validation")
    plot_selections(Path(out), selections,
                    f"one-block probes' validation loss at {fraction:g} labels (mean over seeds; red: chosen)")
    print(f"wrote {out} ({', '.join(selections)})")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4].split(",") if len(sys.argv) > 4 else None)

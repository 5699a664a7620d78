"""README's study results, regenerated from study folders instead of typed by hand.

    python -m mdm.results_docs --publish NAME STUDY_FOLDER --command "python -m mdm.benchmark ..."
        docs/results/NAME.md: the command, then the study's results.md (verdicts in words and as a table, the
        means with sample standard deviations, the pretraining runs, the machine and the time); the study's
        label_efficiency.png / pretrain_budget.png copied to docs/NAME_*.png
    python -m mdm.results_docs --write
        every docs/results/NAME.md embedded in README.md between ``<!-- results:NAME -->`` and
        ``<!-- /results:NAME -->`` (headings moved down to sit under README's own)

tests/test_results_docs.py fails when README's copy of a results file is stale.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from .common.errors import ConfigError
from .common.io import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
FIGURES = ("label_efficiency.png", "pretrain_budget.png", "block_selection.png", "ablation.png", "levels.png")
_BLOCK = re.compile(r"<!-- results:(?P<name>[\w.-]+) -->\n.*?<!-- /results:(?P=name) -->", re.S)


def publish(name: str, study: Path, command: str,
            docs: Path = ROOT / "docs", note: str = "") -> Path:
    """Write ``docs/results/<name>.md`` from the study folder ``study`` and copy its figures;
    returns the file."""
    results = study / "results.md"
    if not results.is_file():
        raise ConfigError(f"{results}: not found (a finished study folder holds it)")
    figures = []
    for figure in FIGURES:
        if (study / figure).is_file():
            target = docs / f"{name}_{figure}"
            shutil.copyfile(study / figure, target)
            figures.append(f"![{figure[:-4].replace('_', ' ')}](docs/{target.name})")
    text = (f"Command: `{command}`\n\n" + (f"{note}\n\n" if note else "") + results.read_text().strip() + "\n"
            + ("\n" + " ".join(figures) + "\n" if figures else ""))
    out = docs / "results" / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return out


def embedded(name: str, text: str) -> str:
    """The README block of results file ``name``: its markdown, headings four levels down."""
    body = re.sub(r"^(#+) ", lambda m: "#" * min(6, len(m.group(1)) + 3) + " ",
                  text.strip(), flags=re.M)
    return f"<!-- results:{name} -->\n{body}\n<!-- /results:{name} -->"


def stale_blocks(readme: str, results: Path = RESULTS) -> list[str]:
    """Names of README blocks whose text differs from their results file (or has none)."""
    stale = []
    for m in _BLOCK.finditer(readme):
        file = results / f"{m.group('name')}.md"
        if not file.is_file() or m.group(0) != embedded(m.group("name"), file.read_text()):
            stale.append(m.group("name"))
    return stale


def rewrite(readme: str, results: Path = RESULTS) -> str:
    """``readme`` with every results block replaced by its file's current text."""
    def block(m):
        file = results / f"{m.group('name')}.md"
        return embedded(m.group("name"), file.read_text()) if file.is_file() else m.group(0)

    return _BLOCK.sub(block, readme)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mdm.results_docs",
                                description=__doc__.split("\n")[0])
    p.add_argument("--publish", nargs=2, metavar=("NAME", "STUDY_FOLDER"))
    p.add_argument("--command", default="",
                   help="the command that ran the study (written above its tables)")
    p.add_argument("--note", default="",
                   help="a line written under the command (e.g. the study's time and machine)")
    p.add_argument("--write", action="store_true", help="embed docs/results/*.md into README.md")
    args = p.parse_args(argv)
    if args.publish:
        print(publish(args.publish[0], Path(args.publish[1]), args.command, note=args.note))
    if args.write:
        readme = ROOT / "README.md"
        write_text_atomic(readme, rewrite(readme.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

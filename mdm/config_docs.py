"""The table of every config key for the README, generated from the dataclasses.

    python -m mdm.config_docs            # print the table
    python -m mdm.config_docs --write    # replace the table in README.md (between the markers)

Each key's line is the ``help`` it is declared with (``config.key``), followed for a key that names
registered things by the names of its registries (``mdm.registries``); a test checks that the
README's table is the one this prints.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .common.config import Config
from .common.config_checks import method_registries
from .common.config_keys import ANY_TASK_METHODS, TASK_METHODS
from .common.io import write_text_atomic
from .common.registry import registry
from .registries import ALL  # noqa: F401 - every registry filled

START, END = "<!-- config-table -->", "<!-- /config-table -->"

SECTIONS = {
    "model": "the U-Net (stored in every export; stage 2 reads it from there, never retyped)",
    "diffusion": "the pretraining objective",
    "data": "images: the pretraining pool, or the labeled dataset of stage 2",
    "train": "the pretraining loop",
    "seg": "the segmentation stage",
    "probe": "the image classification stage (`python -m mdm.probe`, `bench.task: classification`)",
    "bench": "the label-efficiency study",
}



def keys() -> list[tuple[str, object, str]]:
    """Every ``section.key`` with its default and help, in declaration order (a nested section is
    one key)."""
    cfg = Config()
    out = []
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            value = getattr(getattr(cfg, section.name), f.name)
            out.append((f"{section.name}.{f.name}",
                        f"source: {value.source}" if dataclasses.is_dataclass(value)
                        else value, f.metadata["help"] + _names(f.metadata.get("registries", ()))))
    return out


def _names(registries: tuple[str, ...]) -> str:
    """``: `a` (what a is), `b` ...`` for one registry, or ``: pools `a`, `b`; sources `c` `` for
    several."""
    parts = []
    # every task's methods
    registries = tuple(dict.fromkeys(r for name in registries for r in method_registries(
        ANY_TASK_METHODS if name == TASK_METHODS else name, "")))
    for name in registries:
        reg = registry(name)
        listed = ", ".join(f"`{k}`" + (f" ({rec.help})" if getattr(rec, "help", "") else "") for k, rec in reg.items())
        parts.append(f"{name} {listed}" if len(registries) > 1 else listed)
    return (": " + "; ".join(parts)) if parts else ""


def _fmt(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return '""' if value == "" else str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    lines, section = [], None
    for key, default, help_text in keys():
        name = key.split(".")[0]
        if name != section:
            section = name
            lines += ([""] if lines else []) + [f"**{name}**: {SECTIONS[name]}", "",
                                                "| key | default | meaning |", "|---|---|---|"]
        lines.append(f"| `{key}` | `{_fmt(default)}` | {help_text} |")
    return "\n".join(lines)


def replace_in(text: str) -> str:
    """``text`` with the part between the markers replaced by the current table."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="update README.md in place")
    args = p.parse_args()
    if args.write:
        readme = Path(__file__).resolve().parents[1] / "README.md"
        write_text_atomic(readme, replace_in(readme.read_text()))
    else:
        print(markdown_table())


if __name__ == "__main__":
    main()

"""Fill in an sbatch template of this directory: ``{{NAME}}`` placeholders from KEY=VALUE arguments
and the defaults the template declares in its header (``#   {{NAME}}=default  help``;
the default ``<required>`` means the variable must be given).

    python tools/slurm/render.py tools/slurm/sft.sbatch CONFIG=examples/configs/rbft_sft_stage1.yaml \
        NODES=2 GPUS_PER_NODE=8 > job.sbatch && sbatch job.sbatch
    python tools/slurm/render.py tools/slurm/sft.sbatch --list        # the variables and defaults

REPO defaults to this checkout. ``#SBATCH`` lines whose value renders empty (e.g. ``--account=``) are
dropped, so Slurm uses its own default. The log directory (LOG_DIR, relative to REPO) is created,
because Slurm does not create the directory of ``--output``. An unknown variable, or a required one
(no default) left unset, is a one-line error.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DECLARATION = re.compile(r"^#\s+\{\{(\w+)\}\}=(\S*)\s*(.*)$")
REQUIRED = "<required>"
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class RenderError(ValueError):
    pass


def declared(text: str) -> dict[str, tuple[str, str]]:
    """``{name: (default, help)}`` from the template's header (default `REQUIRED` = must be given)."""
    out = {}
    for line in text.splitlines():
        m = DECLARATION.match(line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


def render(template: str | Path, values: dict[str, str], *, make_dirs: bool = True) -> str:
    """The rendered script; raises RenderError for unknown or missing variables."""
    path = Path(template)
    text = path.read_text(encoding="utf-8")
    decl = declared(text)
    unknown = sorted(set(values) - set(decl))
    if unknown:
        raise RenderError(f"{path.name}: unknown variable(s) {unknown}; declared: {sorted(decl)}")
    merged = {name: default for name, (default, _) in decl.items()}
    merged["REPO"] = merged.get("REPO") or str(REPO)
    merged.update(values)
    missing = sorted(n for n, v in merged.items() if v == REQUIRED)
    if missing:
        raise RenderError(f"{path.name}: required variable(s) {missing} not set (NAME=VALUE)")
    used = set(PLACEHOLDER.findall(text))
    undeclared = sorted(used - set(decl))
    if undeclared:
        raise RenderError(f"{path.name}: placeholders {undeclared} are used but not declared in the header")
    lines = []
    for line in text.splitlines():
        if DECLARATION.match(line):
            lines.append(line)  # keep the header as documentation, with the template's defaults
            continue
        out = PLACEHOLDER.sub(lambda m: merged[m.group(1)], line)
        if line.startswith("#SBATCH") and out.rstrip().endswith("="):
            continue
        lines.append(out)
    if make_dirs and "LOG_DIR" in merged:
        log_dir = Path(merged["LOG_DIR"])
        (log_dir if log_dir.is_absolute() else Path(merged["REPO"]) / log_dir).mkdir(parents=True, exist_ok=True)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render an sbatch template of tools/slurm/.")
    ap.add_argument("template", help="e.g. tools/slurm/sft.sbatch")
    ap.add_argument("values", nargs="*", help="NAME=VALUE")
    ap.add_argument("--list", action="store_true", help="print the variables with defaults and help")
    ap.add_argument("-o", "--out", help="write here instead of stdout")
    args = ap.parse_args(argv)
    try:
        if args.list:
            for name, (default, help_) in declared(Path(args.template).read_text(encoding="utf-8")).items():
                print(f"{name}={default}\t{help_}")
            return 0
        values = {}
        for item in args.values:
            name, eq, value = item.partition("=")
            if not eq or not name:
                raise RenderError(f"argument {item!r} is not NAME=VALUE")
            values[name] = value
        text = render(args.template, values)
    except (RenderError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write small synthetic datasets (mp4s + annotations in every supported format) for tests and demos.

Run:
    python tools/make_synthetic.py --out /tmp/syn [--formats all|llava_conv,time_r1_tg,...] [--num 8] [--with-bad]

Writes ``OUT/videos/*.mp4``, ``OUT/<format>/<file>`` and ``OUT/manifest.json`` (which format, mode and
media root to load each file with, and the expected sample and skip counts). See
`megatron_vrft.data.synthetic` for what the broken records (``--with-bad``) contain.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_vrft.data.synthetic import FORMATS, make_synthetic  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--formats", default="all", help=f"'all' or a comma-separated subset of {', '.join(FORMATS)}")
    parser.add_argument("--num", type=int, default=8, help="good records (and videos) per dataset file")
    parser.add_argument("--with-bad", action="store_true", help="add deliberately broken records")
    args = parser.parse_args(argv)
    formats = FORMATS if args.formats == "all" else tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    if args.num < 1:
        parser.error("--num must be >= 1")
    manifest = make_synthetic(args.out, formats, args.num, args.with_bad)
    for d in manifest["datasets"]:
        print(f"{d['format']:14s} {d['mode']:4s} {d['path']}: {d['records']} records, {d['samples']} samples")
    print(f"manifest: {Path(args.out) / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

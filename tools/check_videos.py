"""List the missing, empty and corrupt media files of a dataset; exit 1 when there are any.

Run:
    python tools/check_videos.py DATASET --format FMT [--media-root DIR] [--mode sft|grpo]
                                 [--decode] [--option key=value ...]

Every media file the dataset references is checked once: it must exist, be non-empty, and (for
videos) have a readable header (`probe_video`); images are opened and decoded (cheap). With
``--decode`` each video is also sampled and decoded with the sample's own options, which catches
files truncated after the header (slow: it decodes what training would). Records the adapter
cannot use for non-media reasons (bad JSON, missing keys, paths escaping the media root) are
listed too. ``--option`` passes format options (e.g. ``--option subtitles_root=subs``).
Output: one line per bad file, ``<reason>\t<path>\t<records using it>``, then a summary line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_vrft.data import ADAPTERS, DataFormatError, load_samples  # noqa: E402
from megatron_vrft.data.media import MediaError, load_image  # noqa: E402
from megatron_vrft.data.sample import media_skip_reason  # noqa: E402
from megatron_vrft.data.video import probe_video, read_video  # noqa: E402


def _check(ref, decode: bool) -> str | None:
    """Skip reason for one media reference, or None when it is usable."""
    try:
        if ref.kind == "image":
            load_image(ref.path if ref.path is not None else ref.data)
        elif decode:
            read_video(ref.path, **ref.options)
        else:
            probe_video(ref.path)
    except MediaError as e:
        return media_skip_reason(e)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="annotation file (parquet: file, directory or glob)")
    parser.add_argument("--format", required=True, choices=sorted(ADAPTERS), help="dataset format")
    parser.add_argument("--media-root", default=None, help="directory media paths resolve against")
    parser.add_argument("--mode", default=None, choices=("sft", "grpo"), help="default: the format's first mode")
    parser.add_argument("--decode", action="store_true", help="fully decode each video (slow)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="format option")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    options = {}
    for opt in args.option:
        key, sep, value = opt.partition("=")
        if not sep:
            parser.error(f"--option expects KEY=VALUE, got {opt!r}")
        options[key] = value
    mode = args.mode or ADAPTERS[args.format].MODES[0]
    try:
        samples, report = load_samples(args.dataset, args.format, args.media_root, mode=mode,
                                       check_media=False, max_examples=10**9, **options)
    except DataFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    users: dict[str, list[str]] = defaultdict(list)
    refs = {}
    for sample in samples:
        for ref in sample.media:
            key = ref.describe() if ref.path is not None else f"{sample.source} (embedded image)"
            if sample.source not in users[key]:  # RA-RFT makes two samples per record
                users[key].append(sample.source)
            refs.setdefault(key, ref)
    bad: dict[str, str] = {}
    for key, ref in tqdm(refs.items(), desc="checking media", unit="file", disable=not sys.stderr.isatty()):
        reason = _check(ref, args.decode)
        if reason:
            bad[key] = reason
    for key, reason in sorted(bad.items(), key=lambda kv: (kv[1], kv[0])):
        print(f"{reason}\t{key}\t{', '.join(users[key][:5])}{' …' if len(users[key]) > 5 else ''}")
    for reason, examples in sorted(report.examples.items()):
        for example in examples:
            print(f"{reason}\t{example}")
    record_problems = report.num_skipped
    counts = defaultdict(int)
    for reason in bad.values():
        counts[reason] += 1
    summary = ", ".join(f"{r}={n}" for r, n in sorted(counts.items())) or "none"
    print(f"{len(refs)} media files checked: {len(bad)} bad ({summary}); "
          f"{record_problems} record(s) unusable for other reasons")
    return 1 if bad or record_problems else 0


if __name__ == "__main__":
    sys.exit(main())

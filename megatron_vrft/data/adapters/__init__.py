"""Dataset adapters (one module per format) behind one entry point, `load_samples`.

    samples, report = load_samples("grpo.jsonl", "open_r1_video", media_root="videos/", mode="grpo")
    print(report.summary_line())   # grpo.jsonl: 774 samples from 778 records; skipped 4 (missing_media=4)

Each adapter module defines ``Options`` (a dataclass of its format-specific options, with
defaults), ``MODES`` (which of sft/grpo it supports), ``records(ctx, opts)`` (yields ``(position,
record)``; a `SkipRecord` in place of a record means the record could not even be parsed) and
``convert(record, where, ctx, opts) -> list[Sample]`` (raises `SkipRecord` for a bad record).
Records are never fatal one by one; a file with zero usable samples is (`DataFormatError`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from megatron_vrft.data.adapters import (
    llava_conv,
    open_r1_video,
    rarft_riq,
    robo2vlm_mcq,
    smarthome_vad,
    time_r1_tg,
    video_r2,
)
from megatron_vrft.data.adapters._common import LoadContext
from megatron_vrft.data.sample import DataFormatError, Sample, SkipRecord, SkipReport

logger = logging.getLogger(__name__)

ADAPTERS = {
    "llava_conv": llava_conv,
    "open_r1_video": open_r1_video,
    "time_r1_tg": time_r1_tg,
    "rarft_riq": rarft_riq,
    "robo2vlm_mcq": robo2vlm_mcq,
    "video_r2": video_r2,
    "smarthome_vad": smarthome_vad,
}


def _options(fmt: str, module, options: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(module.Options)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise DataFormatError(f"unknown option(s) {unknown} for format {fmt!r}; valid: {sorted(names)}")
    return module.Options(**options)


def load_samples(
    path: str | Path,
    fmt: str,
    media_root: str | Path | None = None,
    *,
    mode: str = "sft",
    video_options: dict[str, Any] | None = None,
    image_options: dict[str, Any] | None = None,
    check_media: bool = True,
    probe: bool = False,
    path_remap: str | None = None,
    limit: int | None = None,
    max_examples: int = 3,
    **options: Any,
) -> tuple[list[Sample], SkipReport]:
    """Read a dataset file in format ``fmt`` into `Sample`s; bad records are skipped and counted.

    media_root: directory media paths resolve against (see `adapters._common` for the rules).
    mode: "sft" (conversation with a target reply) or "grpo" (prompt only + reward columns).
    video_options / image_options: qwen-vl-utils sampling keys overriding the format's defaults.
    check_media: check that media files exist and are non-empty (cheap); probe: also open each
    video's header. path_remap: None or "basename" (RA-RFT defaults to "basename" with a media_root).
    limit: stop after this many samples. max_examples: skipped locations kept per reason in the
    report. ``options``: the format's own ``Options`` fields.
    Returns ``(samples, report)``; raises DataFormatError when nothing usable remains.
    """
    if fmt not in ADAPTERS:
        raise DataFormatError(f"unknown dataset format {fmt!r}; choose one of {sorted(ADAPTERS)}")
    module = ADAPTERS[fmt]
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"dataset file {path} does not exist")
    if mode not in module.MODES:
        raise DataFormatError(f"format {fmt!r} supports mode {module.MODES}, not {mode!r} ({path})")
    opts = _options(fmt, module, options)
    if path_remap is None and media_root is not None:
        path_remap = getattr(module, "DEFAULT_PATH_REMAP", None)
    ctx = LoadContext(
        path=path,
        media_root=Path(media_root) if media_root is not None else None,
        mode=mode,
        video_options=dict(video_options or {}),
        image_options=dict(image_options or {}),
        check_media=check_media,
        probe=probe,
        path_remap=path_remap,
    )
    report = SkipReport(name=path.name, max_examples=max_examples)
    samples: list[Sample] = []
    for pos, record in module.records(ctx, opts):
        report.total += 1
        where = ctx.where(pos)
        if isinstance(record, SkipRecord):
            report.skip(record.reason, where, record.detail)
            continue
        try:
            converted = module.convert(record, where, ctx, opts)
        except SkipRecord as e:
            report.skip(e.reason, where, e.detail)
            continue
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # A record shaped in a way the adapter did not foresee: skip it, but say exactly what broke.
            report.skip("bad_record", where, f"{type(e).__name__}: {e}")
            continue
        samples.extend(converted)
        if limit is not None and len(samples) >= limit:
            samples = samples[:limit]
            break
    report.kept = len(samples)
    if not samples:
        raise DataFormatError(f"{path}: no usable samples in format {fmt!r}\n{report.details()}")
    (logger.warning if report.skipped else logger.info)("%s", report.summary_line())
    return samples, report


__all__ = ["ADAPTERS", "load_samples"]

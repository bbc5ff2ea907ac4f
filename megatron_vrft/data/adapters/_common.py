"""What every dataset adapter shares: file readers, media path rules, span checks, conversation parsing.

Media path rules (one place, so every format behaves the same):

1. A leading ``file://`` is stripped (no dataset writes it, but qwen-vl-utils users do).
2. With ``media_root`` given, every media path must land inside it after lexical normalisation:
   relative paths are joined to the root; absolute paths must already be under it. A path that ends
   up outside (``../../etc/passwd``, an absolute path elsewhere) is skipped as ``path_escape``.
   Symlinks inside the root are followed without complaint: the check is on the path as written.
3. ``path_remap="basename"`` replaces any path by ``media_root / basename`` first. RA-RFT needs it
   (its annotations mix the authors' absolute paths, repo-relative and ``../`` paths) and it is the
   default there; it also helps Open-R1-Video files whose absolute paths come from another machine.
4. Without ``media_root``, relative paths are joined to the annotation file's directory and must
   stay inside it; absolute paths are used as they are (Open-R1-Video writes absolute paths).

At load time a media file is only checked for existence and non-zero size (cheap); ``probe=True``
also opens each video's header (`probe_video`). Decoding happens later, per sample, in the loader.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from megatron_vrft.data.media import MediaError
from megatron_vrft.data.sample import (
    IMAGE_OPTION_KEYS,
    VIDEO_OPTION_KEYS,
    DataFormatError,
    MediaRef,
    SkipRecord,
    media_skip_reason,
)
from megatron_vrft.data.video import probe_video

MODES = ("sft", "grpo")
PLACEHOLDER = re.compile(r"\n?(<video>|<image>)\n?")
ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class LoadContext:
    """Per-file settings an adapter needs to turn records into samples."""

    path: Path
    media_root: Path | None = None
    mode: str = "sft"
    video_options: dict[str, Any] = field(default_factory=dict)
    image_options: dict[str, Any] = field(default_factory=dict)
    check_media: bool = True
    probe: bool = False
    path_remap: str | None = None
    _durations: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in MODES:
            raise DataFormatError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.path_remap not in (None, "basename"):
            raise DataFormatError(f"path_remap must be None or 'basename', got {self.path_remap!r}")
        if self.path_remap == "basename" and self.media_root is None:
            raise DataFormatError(f"{self.path}: path_remap='basename' needs media_root")
        for name, opts, keys in (("video", self.video_options, VIDEO_OPTION_KEYS),
                                 ("image", self.image_options, IMAGE_OPTION_KEYS)):
            unknown = sorted(set(opts) - set(keys))
            if unknown:
                raise DataFormatError(f"unknown {name} option(s) {unknown}; allowed: {list(keys)}")

    def where(self, pos: str | int) -> str:
        """``file:line`` / ``file:index``; string positions (``file#row`` for parquet) are complete."""
        return pos if isinstance(pos, str) else f"{self.path.name}:{pos}"

    # ------------------------------------------------------------------ paths and media

    def resolve(self, raw: Any) -> str:
        """Annotation path -> checked absolute path (see the module docstring); raises SkipRecord."""
        if not isinstance(raw, str) or not raw.strip():
            raise SkipRecord("missing_key", f"media path is {raw!r}")
        text = raw.strip()
        if text.startswith("file://"):
            text = text[len("file://"):]
        root = self.media_root
        if self.path_remap == "basename":
            text = os.path.basename(text.replace("\\", "/"))
        if root is None:
            if os.path.isabs(text):
                return os.path.normpath(text)
            root = self.path.parent
        full = os.path.normpath(os.path.join(os.path.abspath(root), text))
        root_abs = os.path.normpath(os.path.abspath(root))
        if os.path.commonpath([full, root_abs]) != root_abs:
            raise SkipRecord("path_escape", f"{raw!r} resolves outside {root_abs}")
        return full

    def check_file(self, path: str) -> None:
        if not self.check_media:
            return
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise SkipRecord("missing_media", path) from None
        except OSError as e:
            raise SkipRecord("missing_media", f"{path}: {e}") from None
        if size == 0:
            raise SkipRecord("empty_media", f"{path}: zero-byte file")

    def video(self, raw: Any, defaults: dict[str, Any] | None = None, **extra) -> MediaRef:
        """A checked video reference; options = adapter defaults overridden by the user's."""
        path = self.resolve(raw)
        self.check_file(path)
        if self.probe:
            self.duration_of(path)
        options = {**(defaults or {}), **self.video_options}
        if "nframes" in self.video_options:
            options.pop("fps", None)  # a user's nframes replaces an adapter's default fps
        if "fps" in self.video_options:
            options.pop("nframes", None)
        return MediaRef("video", path=path, options={k: v for k, v in options.items() if v is not None}, **extra)

    def image(self, raw_path: Any = None, data: bytes | None = None) -> MediaRef:
        if data is not None:
            if len(data) == 0:
                raise SkipRecord("empty_media", "zero-byte image")
            return MediaRef("image", data=bytes(data), options=dict(self.image_options))
        path = self.resolve(raw_path)
        self.check_file(path)
        return MediaRef("image", path=path, options=dict(self.image_options))

    def duration_of(self, path: str) -> float:
        """Seconds of a video from its header (cached); raises SkipRecord for bad files."""
        if path not in self._durations:
            try:
                self._durations[path] = probe_video(path).duration
            except MediaError as e:
                raise SkipRecord(media_skip_reason(e), str(e)) from None
        return self._durations[path]


# ---------------------------------------------------------------------- readers


WRAPPER_KEYS = ("data", "annotations", "samples", "records")


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None


def _unwrap(path: Path, data: Any) -> list:
    # Some exports wrap the list: {"data": [...]} / {"annotations": [...]}.
    if isinstance(data, dict):
        for key in WRAPPER_KEYS:
            if isinstance(data.get(key), list):
                return data[key]
        raise DataFormatError(f"{path}: expected a JSON list of records, got an object with keys {sorted(data)[:8]}")
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def read_json_list(path: Path) -> Iterator[tuple[int, Any]]:
    """(index, record) of a JSON list file; a syntax error is fatal and names line/column."""
    yield from enumerate(_unwrap(path, _load_json(path)))


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, record or SkipRecord) of a JSON-lines file; bad lines are skipped, not fatal."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, SkipRecord("bad_json", f"col {e.colno}: {e.msg}")


def read_json_any(path: Path) -> Iterator[tuple[int, Any]]:
    """A JSON list (possibly wrapped in ``{"data": [...]}``) or JSON lines, by content: several
    datasets ship JSON lines under a ``.json`` name."""
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()[:1]
    if head == "{":
        try:
            data = _load_json(path)
        except DataFormatError:
            return read_jsonl(path)  # several objects, one per line
        if isinstance(data, dict) and not any(isinstance(data.get(k), list) for k in WRAPPER_KEYS):
            return read_jsonl(path)  # a single-record JSON-lines file
        return enumerate(_unwrap(path, data))
    return read_json_list(path)


def read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row dict) of a CSV file with a header (UTF-8, BOM tolerated)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise DataFormatError(f"{path}: empty CSV (no header)")
        for row in reader:
            yield reader.line_num, {k.strip() if k else k: v for k, v in row.items()}


# ---------------------------------------------------------------------- record helpers


def require(record: Any, key: str, types: type | tuple[type, ...] | None = None) -> Any:
    """record[key], or SkipRecord("missing_key") when absent/null/empty or of the wrong type."""
    if not isinstance(record, dict):
        raise SkipRecord("bad_record", f"record is a {type(record).__name__}, not an object")
    value = record.get(key)
    if value is None or (isinstance(value, (str, list, dict)) and len(value) == 0):
        raise SkipRecord("missing_key", f"no {key!r}")
    if types is not None and not isinstance(value, types):
        raise SkipRecord("bad_record", f"{key!r} is a {type(value).__name__}")
    return value


def as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def answer_text(text: str) -> str:
    """Contents of the last ``<answer>`` block, else the stripped text.

    The blocks are those of ``re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)`` (each
    ``<answer>`` closed by the next ``</answer>``), found with ``str.find`` in linear time: that lazy
    regex rescans to the end of the text from every unclosed ``<answer>`` (quadratic: 64 s for
    ``"<answer>" * 20000``)."""
    text = text or ""
    last, pos = None, 0
    while (start := text.find("<answer>", pos)) >= 0:
        end = text.find("</answer>", start + len("<answer>"))
        if end < 0:
            break
        last, pos = text[start + len("<answer>") : end], end + len("</answer>")
    return last.strip() if last is not None else text.strip()


def check_span(span: Any, duration: float | None) -> list[float]:
    """A ``[start, end]`` in seconds, clamped to ``[0, duration]``; SkipRecord("bad_timestamp") when
    it is malformed, negative, reversed, empty, or lies wholly outside the video."""
    try:
        start, end = (float(x) for x in span)
    except (TypeError, ValueError):
        raise SkipRecord("bad_timestamp", f"span {span!r} is not [start, end]") from None
    if not (start == start and end == end) or start < 0 or end <= start:
        raise SkipRecord("bad_timestamp", f"span {span!r} is negative, empty or reversed")
    if duration is not None:
        if start >= duration:
            raise SkipRecord("bad_timestamp", f"span {span!r} starts after the video ends ({duration:.2f}s)")
        end = min(end, duration)
    return [start, end]


def positive_duration(value: Any) -> float | None:
    try:
        d = float(value)
    except (TypeError, ValueError):
        return None
    return d if d > 0 and d == d and d != float("inf") else None


def split_placeholders(text: str) -> list[str | tuple[str]]:
    """Text with ``<video>``/``<image>`` placeholders (plus an optional newline either side, as
    Qwen-VL-Series-Finetune strips them) -> pieces: str text or ``("video",)``/``("image",)``."""
    out: list = []
    pos = 0
    for m in PLACEHOLDER.finditer(text):
        if m.start() > pos:
            out.append(text[pos:m.start()])
        out.append((m.group(1)[1:-1],))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def conversation_messages(conversations: Any, media: list[MediaRef], *, keep_placeholders: bool = True,
                          system_prompt: str | None = None) -> list[dict]:
    """LLaVA-style ``[{from, value}]`` turns -> Qwen messages with media items in place.

    Placeholders consume ``media`` of their kind in order; media not placed by any placeholder go in
    front of the first user turn. With ``keep_placeholders=False`` (GRPO in Qwen-VL-Series-Finetune
    and Video-R2) placeholders are dropped and every media item goes in front of the first user text.
    """
    if not isinstance(conversations, list) or not conversations:
        raise SkipRecord("missing_key", "no 'conversations'")
    queues = {"video": [m for m in media if m.kind == "video"], "image": [m for m in media if m.kind == "image"]}
    messages: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    first_user: dict | None = None
    for turn_no, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "value" not in turn:
            raise SkipRecord("bad_record", f"turn {turn_no} has no 'value'")
        role = ROLE_MAP.get(str(turn.get("from", turn.get("role", ""))).lower())
        if role is None:
            raise SkipRecord("bad_record", f"turn {turn_no} has unknown speaker {turn.get('from')!r}")
        value = str(turn["value"])
        if role != "user":
            messages.append({"role": role, "content": value})
            continue
        content: list[dict] = []
        for piece in split_placeholders(value):
            if isinstance(piece, str):
                if piece:
                    content.append({"type": "text", "text": piece})
            elif keep_placeholders:
                kind = piece[0]
                if not queues[kind]:
                    raise SkipRecord("bad_record", f"more <{kind}> placeholders than {kind} paths")
                ref = queues[kind].pop(0)
                content.append({"type": kind, kind: ref.describe()})
        message = {"role": "user", "content": content}
        first_user = first_user or message
        messages.append(message)
    if first_user is None:
        raise SkipRecord("bad_record", "no user turn")
    leftover = queues["image"] + queues["video"]
    if leftover:
        first_user["content"][:0] = [{"type": m.kind, m.kind: m.describe()} for m in media if m in leftover]
    return messages


def media_in_message_order(messages: list[dict], media: list[MediaRef]) -> list[MediaRef]:
    """``media`` reordered to match the order items appear in ``messages`` (what the template sees)."""
    by_path: dict[str, list[MediaRef]] = {}
    for m in media:
        by_path.setdefault(m.describe(), []).append(m)
    ordered = []
    for message in messages:
        content = message["content"]
        for item in content if isinstance(content, list) else []:
            if item.get("type") in ("video", "image"):
                ordered.append(by_path[item[item["type"]]].pop(0))
    return ordered


def last_assistant(messages: list[dict]) -> str:
    if not messages or messages[-1]["role"] != "assistant":
        raise SkipRecord("bad_record", "the conversation does not end with an assistant turn")
    return messages[-1]["content"]

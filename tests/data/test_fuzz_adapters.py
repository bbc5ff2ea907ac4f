"""Property-based fuzzing of every adapter's record parsing (hypothesis): any file of records, each a
synthetic valid record with fields deleted, retyped or replaced by arbitrary JSON (or a record that
is arbitrary JSON altogether), loads into samples plus counted skips, or raises a
``DataFormatError`` naming the file; no other exception. Plus linear-time guards on long
adversarial field values (10x longer input must cost < 30x)."""

from __future__ import annotations

import csv
import json
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _synthetic import dataset, synthetic_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_vrft.data import DataFormatError, load_samples
from megatron_vrft.data.adapters._common import answer_text, split_placeholders
from tests.fuzz import JSON, TRICKY, scales_linearly

CASES = [(d["format"], d["mode"]) for d in synthetic_tree()[1]["datasets"]]
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

def _read_records(path: Path) -> list:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":  # the synthetic file has a broken line on purpose: templates skip it
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else next(v for v in data.values() if isinstance(v, list))


def _write_records(path: Path, records: list) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    elif path.suffix == ".csv":
        keys = sorted({k for r in records for k in r})
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(records)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))


def _typed_like(value):
    """Parquet columns keep one type: replacements of the template's type (or null)."""
    if isinstance(value, bytes):
        return st.none() | st.binary(max_size=16)
    if isinstance(value, list):
        return st.none() | st.lists(st.text(max_size=12) | TRICKY, max_size=5)
    if isinstance(value, int):
        return st.none() | st.integers(min_value=-2**40, max_value=2**40)
    return st.none() | st.text(max_size=30) | TRICKY


@st.composite
def mutated_records(draw, template: dict, suffix: str):
    def field_value(key, value):
        if suffix == ".csv":
            return draw(st.text(max_size=30) | TRICKY)
        if suffix == ".parquet":
            return draw(_typed_like(value))
        return draw(JSON | st.lists(JSON, max_size=3) if isinstance(value, list) else JSON)

    records = []
    for _ in range(draw(st.integers(1, 3))):
        if suffix == ".jsonl" and draw(st.booleans()) and not records:
            records.append(draw(JSON))  # a record that is not even an object
            continue
        rec = dict(template)
        for key in list(rec):
            action = draw(st.sampled_from(["keep", "keep", "delete", "replace"]))
            if action == "delete" and suffix != ".parquet":
                del rec[key]
            elif action == "replace":
                rec[key] = field_value(key, rec[key])
        records.append(rec)
    return records


@pytest.mark.parametrize("fmt,mode", CASES)
def test_any_record_is_a_sample_a_counted_skip_or_a_named_format_error(fmt, mode):
    d = dataset(fmt, mode)
    template = next(r for r in _read_records(d["path"]) if isinstance(r, dict))
    suffix = d["path"].suffix

    @FUZZ
    @given(records=mutated_records(template, suffix))
    def check(records):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / d["path"].name
            try:
                _write_records(path, records)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                return  # the harness cannot write this mix (e.g. parquet types): nothing to parse
            try:
                samples, report = load_samples(path, fmt, d["media_root"], mode=mode, **d["options"])
            except DataFormatError as e:
                assert str(path) in str(e) or path.name in str(e), str(e)
                return
            assert report.total >= 1 and report.kept == len(samples) >= 1
            assert report.num_skipped <= report.total
            for s in samples:
                assert s.source.startswith(path.name)

    check()


LONG_INPUTS = {
    "unclosed answers": lambda n: "<answer>" * n,
    "answers closed at the end": lambda n: "<answer>x" * n + "</answer>",
    "nested answers": lambda n: "<answer>" * n + "a" + "</answer>" * n,
    "placeholders and newlines": lambda n: "\n<video>\n" * n,
    "newlines only": lambda n: "\n" * n + "<image>",
}


@pytest.mark.parametrize("name", sorted(LONG_INPUTS))
def test_field_parsers_are_linear_time(name):
    make = LONG_INPUTS[name]
    for fn in (answer_text, split_placeholders):
        ok, small, large = scales_linearly(fn, make, 1000)
        assert ok, (fn.__name__, name, small, large)


@given(st.lists(st.sampled_from(["<answer>", "</answer>", "a", " ", "\n", "<", ">", "answer"]), max_size=40)
       .map("".join))
@settings(max_examples=200, deadline=None, database=None)
def test_answer_text_equals_the_regex_it_replaces(fragments):
    blocks = re.findall(r"<answer>(.*?)</answer>", fragments, re.DOTALL)
    assert answer_text(fragments) == (blocks[-1].strip() if blocks else fragments.strip())

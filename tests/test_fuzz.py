"""Fuzzing the parsers of user input: whatever the bytes or text, the answer is the parsed value or
a one-line UserError, never another exception."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pretune.cloze.pattern import Pattern
from pretune.cloze.verbalizer import Verbalizer
from pretune.data import load_task, read_examples
from pretune.errors import UserError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
# Rows that look like examples (the usual columns, odd values) more often than random JSON would.
rows = st.dictionaries(st.sampled_from(["text", "text_pair", "label", "other"]), json_values, max_size=4) | json_values


def answers_or_refuses(parse, *args):
    """The parse's value, or None when it refused with one line."""
    try:
        return parse(*args)
    except UserError as error:
        assert "\n" not in str(error) and str(error)
        return None


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def written(folder: Path, data: bytes, suffix: str) -> Path:
    path = folder / f"data{suffix}"
    path.write_bytes(data)
    return path


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".csv", ".tsv"]))
def test_readers_on_random_bytes(folder, data, suffix):
    path = written(folder, data, suffix)
    examples = answers_or_refuses(read_examples, path)
    assert examples is None or (examples and all(isinstance(e.text, str) for e in examples))
    answers_or_refuses(load_task, str(path))


@FUZZ
@given(lines=st.lists(rows, max_size=6), blank=st.booleans())
def test_readers_on_random_json_lines(folder, lines, blank):
    text = "".join(json.dumps(row) + ("\n\n" if blank else "\n") for row in lines)
    path = written(folder, text.encode("utf-8"), ".jsonl")
    answers_or_refuses(read_examples, path)
    task = answers_or_refuses(load_task, str(path))
    assert task is None or (len(task.labels or [0, 0]) >= 2 and task.train)


@FUZZ
@given(cells=st.lists(st.lists(st.text(max_size=12), min_size=1, max_size=4), max_size=6), delimiter=st.sampled_from(",\t"))
def test_readers_on_random_tables(folder, cells, delimiter):
    text = "\n".join(delimiter.join(row) for row in [["text", "label"], *cells])
    answers_or_refuses(read_examples, written(folder, text.encode("utf-8"), ".csv" if delimiter == "," else ".tsv"))


pattern_text = st.text(alphabet=st.sampled_from(list("{}[]P*:0123456789 abtexmskpair_.\n")), max_size=40)
pattern_pieces = st.lists(
    st.sampled_from(["{text}", "{text_pair}", "{mask}", "{", "}", "[P]", "[P*2]", "[P:", "]", "{{", "]]", " It was ", "x"]),
    max_size=8,
).map("".join)


@FUZZ
@given(source=pattern_text | pattern_pieces | st.text(max_size=30))
def test_pattern_parser_answers_or_refuses(source):
    pattern = answers_or_refuses(Pattern.parse, source)
    assert pattern is None or pattern.source == source


@FUZZ
@given(spec=st.text(alphabet=st.sampled_from(list("=,; ab-\n\u2603")), max_size=30) | st.text(max_size=30))
def test_verbalizer_parser_answers_or_refuses(spec):
    verbalizer = answers_or_refuses(Verbalizer.parse, spec)
    assert verbalizer is None or all(all(words) for words in verbalizer.words.values())

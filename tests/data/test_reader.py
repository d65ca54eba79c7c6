"""aia.data.read_records: the one reader of JSON / JSON Lines / parquet, and its one-line errors."""

import json

import pytest

from aia.data import read_records, task_records
from aia.errors import DataError
from tests.helpers import und_record

REC = und_record(("q", "a"), image="a.png")


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(REC).encode() + b"\n")
    assert read_records(path) == [REC]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.jsonl", "é".encode("latin-1"), r"latin1\.jsonl: line 1: not UTF-8 text"),
        ("blank.jsonl", b"\n  \n", r"blank\.jsonl: no records"),
        ("empty.json", b"[]", r"empty\.json: no records"),
        ("zero.jsonl", b"", r"zero\.jsonl: no records"),
        ("list.json", b'[{"a": 1}, 2]', r"list\.json: record 1: a record must be a JSON object"),
    ],
)
def test_bad_files_name_file_and_record(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_records(path)


def test_missing_file_and_missing_task(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such data file"):
        read_records(tmp_path / "nope.jsonl")
    path = tmp_path / "und.jsonl"
    path.write_text(json.dumps(REC) + "\n")
    assert task_records(path, "und") == [REC]
    with pytest.raises(DataError, match=r"und\.jsonl: no 'gen' records"):
        task_records(path, "gen")
    with pytest.raises(ValueError, match="task must be 'und' or 'gen', got 'x'"):
        task_records(path, "x")

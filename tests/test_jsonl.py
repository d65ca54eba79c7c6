"""aia.jsonl: lines end at "\\n" only; one-line errors name the file and the line."""

from __future__ import annotations

import json

import pytest

from aia.errors import DataError
from aia.jsonl import json_line, mend_torn_end, read_json_rows, read_jsonl, write_jsonl

# str.splitlines() breaks at each of these; JSON strings may hold them raw
SEPARATORS = "\u2028\u2029\u0085"
ROWS = [
    {"id": "a", "prediction": f"one{SEPARATORS}two", "note": "é ü 中"},
    {"id": "b", "prediction": "\u2028", "nested": {"x": ["\u0085", "\u2029"]}},
    {"id": "c", "prediction": "plain"},
]


def test_writer_escapes_separators_and_round_trips(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, ROWS)
    text = path.read_text(encoding="utf-8")
    assert not set(SEPARATORS) & set(text)  # escaped: any line splitter reads the file
    assert len(text.splitlines()) == len(ROWS)
    assert "é ü 中" in text  # other non-ASCII text stays readable
    lines = read_jsonl(path)
    assert [line.value for line in lines] == ROWS
    assert [line.number for line in lines] == [1, 2, 3]
    assert [json.loads(line.text) for line in lines] == ROWS


def test_reader_takes_separators_raw(tmp_path):
    """What other writers (and `aia answer` before this reader) leave: the characters unescaped."""
    path = tmp_path / "raw.jsonl"
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    assert set(SEPARATORS) <= set(raw) and len(raw.splitlines()) > len(ROWS)
    path.write_text(raw, encoding="utf-8")
    assert [line.value for line in read_jsonl(path)] == ROWS
    assert [value for _, value in read_json_rows(path)] == ROWS


def test_json_line_is_one_strict_line():
    line = json_line({"text": f"a\nb\r{SEPARATORS}"})
    assert line.endswith("\n") and line.count("\n") == 1 and len(line.splitlines()) == 1
    with pytest.raises(ValueError):
        json_line({"loss": float("nan")})


def test_blank_lines_crlf_and_bom(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n   \n{"a": "x\\u2028"}\r\n')
    lines = read_jsonl(path)
    assert [(line.number, line.value) for line in lines] == [(1, {"a": 1}), (4, {"a": "x\u2028"})]
    assert lines[0].text == '{"a": 1}'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # binary junk (no NUL), not UTF-8
        (b'{"a": 1}\n\xff\xfe\x80\x81 junk \xc3\x28\n{"a": 2}\n', r"line 2: not UTF-8 text \(byte 0 of the line\)$"),
        (b'{"a": 1}\n{"a": 2}\n{"b": "ok"} \xe9t\xe9\n', r"line 3: not UTF-8 text \(byte 12 of the line\)$"),
        # UTF-8 junk with a carriage return and separators inside: still one line of error
        ('{"a": 1}\n\x01\x02\u2028junk\r\x1b[0m\n'.encode(), r"line 2: invalid JSON: Expecting value \(column 1\)$"),
        (b'{"a": 1}\n{"a": 1}{"b": 2}\n', r"line 2: invalid JSON: Extra data \(column 9\)$"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "junk.jsonl"
    path.write_bytes(content)
    for read in (read_jsonl, read_json_rows):
        with pytest.raises(DataError, match=r"junk\.jsonl: " + message) as err:
            read(path)
        assert "\n" not in str(err.value) and "\r" not in str(err.value)


def test_json_list_files(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False, indent=1), encoding="utf-8")
    assert read_json_rows(path) == list(enumerate(ROWS))
    path.write_text('[{"a": 1},\n oops]')
    with pytest.raises(DataError, match=r"list\.json: line 2: invalid JSON: Expecting value \(column 2\)"):
        read_json_rows(path)
    path.write_bytes(b'[{"a": "\xe9"}]')
    with pytest.raises(DataError, match=r"list\.json: not UTF-8 text \(byte 8\)"):
        read_json_rows(path)
    with pytest.raises(DataError, match=r"none\.jsonl: no such file"):
        read_json_rows(tmp_path / "none.jsonl")


def test_very_long_lines(tmp_path):
    rows = [{"id": i, "text": ("x" * 1_000_003 + SEPARATORS) * (i + 1)} for i in range(3)]
    path = tmp_path / "long.jsonl"
    write_jsonl(path, rows)
    assert [line.value for line in read_jsonl(path)] == rows
    with path.open("a", encoding="utf-8") as f:
        f.write('{"id": 3, "text": "' + "y" * 3_000_000 + "\n")  # a long line without its closing quote
    with pytest.raises(DataError, match=r"long\.jsonl: line 4: invalid JSON: Unterminated string"):
        read_jsonl(path)


def test_mend_torn_end(tmp_path):
    path = tmp_path / "log.jsonl"
    assert mend_torn_end(path) is None and not path.exists()
    path.write_text('{"step": 1}\n{"step": 2, "lo')  # killed half way through line 2
    assert mend_torn_end(path) == 2
    assert path.read_text() == '{"step": 1}\n'
    assert mend_torn_end(path) is None and path.read_text() == '{"step": 1}\n'
    path.write_text('{"step": 1}\n{"step": 2}')  # killed just before the newline: the row is kept
    assert mend_torn_end(path) is None
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    path.write_bytes(b'{"step": 1}\n{"text": "\xe2\x80')  # cut inside a multi-byte character
    assert mend_torn_end(path) == 2 and path.read_bytes() == b'{"step": 1}\n'
    path.write_bytes(b'\xef\xbb\xbf{"step": 1}')  # one complete line after a byte order mark
    assert mend_torn_end(path) is None and read_jsonl(path)[0].value == {"step": 1}
    path.write_text('{"step": 1}\n  ')
    assert mend_torn_end(path) is None and [line.value for line in read_jsonl(path)] == [{"step": 1}]

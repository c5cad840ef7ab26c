"""writers: one JSON line per record, atomic writes that follow the umask, output names."""

import json
import math
import os

import pytest

from camcli.writers import json_line


@pytest.mark.parametrize(
    "name",
    [
        os.fsdecode(b"caf\xe9.jpg"),  # Latin-1 bytes: not UTF-8, kept as lone surrogates
        "caf\u00e9 \u732b.jpg",
        "line\u2028break\x85.jpg",
        'quote" back\\slash\nnew.jpg',
    ],
)
def test_json_line_is_one_line_of_utf8_that_loads_back_the_same(name):
    record = {"input": name, "score": 0.5, "outputs": [name]}
    line = json_line(record)
    assert len(line.splitlines()) == 1
    data = line.encode("utf-8")  # raises for a lone surrogate left in the text
    assert json.loads(data) == record
    if name.isprintable():
        assert name in line  # readable UTF-8 text, not \\u escapes


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_json_line_refuses_non_finite_numbers(bad):
    with pytest.raises(ValueError):
        json_line({"score": bad})

"""Unit tests, natively under CPython: `python -m pytest`."""

import app


def test_merged_partials_are_the_whole() -> None:
    a = {"columns": ["x"], "counts": [2], "sums": [3.0]}
    b = {"columns": ["x"], "counts": [1], "sums": [4.0]}
    empty = {"columns": ["x"], "counts": [0], "sums": [0.0]}
    assert app.merge_states(app.merge_states(a, empty), b) == {"columns": ["x"], "counts": [3], "sums": [7.0]}

"""Unit tests, natively under CPython: `python -m pytest`."""

import math

import app


def part(values: list[float]) -> dict:
    lo, hi = (min(values), max(values)) if values else (math.inf, -math.inf)
    return {"column": "y", "rows": len(values), "sum": sum(values), "min": lo, "max": hi}


def test_merged_partials_are_the_whole() -> None:
    merged = app.merge_states(app.merge_states(part([3.0]), part([1.0, 5.0])), part([]))
    assert merged == part([3.0, 1.0, 5.0])

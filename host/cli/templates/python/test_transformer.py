"""Unit tests, natively under CPython: `python -m pytest`."""

import pytest
import wasmpipe_sdk as wp

import app


def test_the_config_parses_and_checks_its_bounds() -> None:
    assert wp.parse_config(app.Config, '{"column": "x", "hi": 2}') == app.Config("x", 0.0, 2.0)
    with pytest.raises(wp.ConfigError, match="lo"):
        wp.parse_config(app.Config, '{"column": "x", "lo": 3, "hi": 2}')
    with pytest.raises(wp.ConfigError, match="colum: unknown key"):
        wp.parse_config(app.Config, '{"colum": "x"}')

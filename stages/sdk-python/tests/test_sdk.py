"""The SDK's pure parts under CPython (outside a component): typed
configuration, and the text_features stage's counting."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
import collections.abc
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "text_features"))

import wasmpipe_sdk as wp  # noqa: E402


@dataclass
class Inner:
    lo: float = 0.0


@dataclass
class Config:
    column: str
    k: int = 3
    scale: float = 1.0
    names: list[str] = field(default_factory=list)
    limit: Optional[int] = None
    strict: bool = False
    inner: Inner = field(default_factory=Inner)


def test_a_config_parses_into_its_dataclass() -> None:
    c = wp.parse_config(Config, '{"column": "x", "k": 5, "scale": 2, "names": ["a"], "limit": null, "inner": {"lo": -1}}')
    assert c == Config(column="x", k=5, scale=2.0, names=["a"], limit=None, inner=Inner(lo=-1.0))
    assert isinstance(c.scale, float)
    assert wp.parse_config(Config, '{"column": "x"}') == Config(column="x")
    assert wp.parse_config(None, '{"any": [1]}') == {"any": [1]}


@pytest.mark.parametrize(
    ("doc", "said"),
    [
        ('{"column": "x", "kk": 1}', "kk: unknown key (this stage takes: column, k, scale, names, limit, strict, inner)"),
        ("{}", "column: missing"),
        ('{"column": 3}', "column: expected a string, got 3"),
        ('{"column": "x", "k": 2.5}', "k: expected an integer"),
        ('{"column": "x", "k": true}', "k: expected an integer"),
        ('{"column": "x", "scale": "big"}', "scale: expected a number"),
        ('{"column": "x", "names": ["a", 1]}', "names[1]: expected a string"),
        ('{"column": "x", "strict": "yes"}', "strict: expected true or false"),
        ('{"column": "x", "inner": {"hi": 1}}', "inner.hi: unknown key"),
        ("[1, 2]", "the configuration is not a table"),
    ],
)
def test_a_wrong_config_names_the_key(doc: str, said: str) -> None:
    with pytest.raises(wp.ConfigError) as e:
        wp.parse_config(Config, doc)
    assert said in str(e.value)


def test_a_config_error_is_a_stage_error() -> None:
    assert issubclass(wp.ConfigError, wp.StageError)
    with pytest.raises(wp.StageError, match="on purpose"):
        wp.fail("on purpose")


def test_text_features_counts_characters_and_tokens() -> None:
    import app  # stages/text_features

    chars, tokens, valid = app.counts(["a b  c", None, "café Café", ""], distinct=False, lowercase=False)
    assert (chars, tokens, valid) == ([6, 0, 9, 0], [3, 0, 2, 0], [True, False, True, True])
    _, distinct, _ = app.counts(["a A a b"], distinct=True, lowercase=True)
    assert distinct == [2]
    assert app.Transform is app.TextFeatures, "outside a component the stage class is exported as it is"


@dataclass
class Modern:
    weights: "collections.abc.Sequence[float]"
    cap: int | None = None

    def __post_init__(self) -> None:
        if self.cap is not None and self.cap < 0:
            raise ValueError("cap must be at least 0")


def test_abc_generics_new_unions_and_post_init_checks_are_config_errors() -> None:
    assert wp.parse_config(Modern, '{"weights": [1, 2.5], "cap": 3}') == Modern(weights=[1.0, 2.5], cap=3)
    assert wp.parse_config(Modern, '{"weights": []}').cap is None
    for doc, said in [
        ('{"weights": "abc"}', "weights: expected a list"),
        ('{"weights": [1], "cap": "x"}', "cap: expected int | None"),
        ('{"weights": [1], "cap": -1}', "cap must be at least 0"),
    ]:
        with pytest.raises(wp.ConfigError, match=said.replace("|", r"\|")):
            wp.parse_config(Modern, doc)

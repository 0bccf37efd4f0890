"""The SDK's pure parts under CPython (outside a component): typed
configuration, the estimator protocol (partial states, passes, models),
and the Python stages' own logic."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
import collections.abc
import json
import math
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


class Sums(wp.Estimator):
    """Sums numbers in two passes: the first learns the count, the second
    the sum of squares around the mean (a carry), as an iterative fit does."""

    def begin(self, task: wp.Task, carry: Optional[float]) -> dict:
        return {"n": 0, "total": 0.0, "mean": carry, "m2": 0.0, "odd": float("nan")}

    def update(self, state: dict, batch: list[float]) -> None:  # a list stands for a Batch here
        for x in batch.raw:
            state["n"] += 1
            state["total"] += x
            if state["mean"] is not None:
                state["m2"] += (x - state["mean"]) ** 2

    def merge(self, left: dict, right: dict) -> dict:
        return {k: (left[k] + right[k] if k in ("n", "total", "m2") else left[k]) for k in left}

    def finalize(self, state: dict, pass_: int) -> "wp.Done | wp.NextPass":
        if state["mean"] is None:
            return wp.NextPass(state["total"] / state["n"])
        return wp.Done({"mean": state["mean"], "var": state["m2"] / state["n"]})

    def apply(self, model: dict, batch: "wp.Batch") -> "wp.Batch":
        return wp.Batch([x - model["mean"] for x in batch.raw])


def fit(fitting: "wp._Fitting", partitions: list[list[list[float]]]) -> bytes:
    """Drive the fit interface as the host does: passes until done."""
    carry, pass_ = None, 0
    while True:
        states = []
        for p, batches in enumerate(partitions):
            fitting.fit_open(wp.Task("t", "s", p, len(partitions), pass_), carry)
            for b in batches:
                fitting.fit_batch(wp.Batch(b))
            states.append(fitting.fit_close())
        merged = states[0]
        for s in states[1:]:
            merged = fitting.merge(merged, s)
        which, data = fitting.finalize(merged, pass_)
        if which == "done":
            return data
        carry, pass_ = data, pass_ + 1


def test_an_estimator_fits_over_partitions_and_passes_then_applies_its_model() -> None:
    import json

    data = [[[1.0, 2.0], [3.0]], [], [[4.0, 10.0]]]
    model = fit(wp._Fitting(Sums), data)
    assert json.loads(model) == {"mean": 4.0, "var": 10.0}
    assert fit(wp._Fitting(Sums), [[[1.0, 2.0, 3.0, 4.0, 10.0]]]) == model, "the same at one partition"
    apply = wp._Fitting(Sums)
    apply.open(wp.Task("t", "s", 0, 1, 0), model)
    assert apply.transform(wp.Batch([4.0, 5.0])).raw == [0.0, 1.0]
    with pytest.raises(wp.StageError, match="needs its fitted model"):
        apply.open(wp.Task("t", "s", 0, 1, 0), None)


def test_states_keep_nan_and_models_are_strict_json() -> None:
    f = wp._Fitting(Sums)
    f.fit_open(wp.Task("t", "s", 0, 1, 0), None)
    state = f.fit_close()
    assert math.isnan(wp._decode_state(state, "state")["odd"]), "a state keeps NaN"
    with pytest.raises(wp.StageError, match="cannot encode the model as JSON"):
        wp.encode_model({"w": float("nan")})
    with pytest.raises(wp.StageError, match="cannot encode the model as JSON"):
        wp.encode_model({"w": object()})
    assert json.loads(wp.encode_model(Inner(lo=2.5))) == {"lo": 2.5}, "a dataclass is a dict"
    with pytest.raises(wp.StageError, match="cannot decode the merged state"):
        f.finalize(b"not a pickle", 0)
    with pytest.raises(wp.StageError, match="fit_batch called before fit_open"):
        wp._Fitting(Sums).fit_batch(wp.Batch([1.0]))


def test_finalize_must_say_done_or_next_pass() -> None:
    class Bare(Sums):
        def finalize(self, state: dict, pass_: int) -> dict:  # type: ignore[override]
            return {"mean": 1.0}

    f = wp._Fitting(Bare)
    f.fit_open(wp.Task("t", "s", 0, 1, 0), None)
    with pytest.raises(wp.StageError, match=r"wp.Done\(model\) or wp.NextPass\(carry\)"):
        f.finalize(f.fit_close(), 0)


def test_the_python_scaler_merges_moments_as_one_pass_would() -> None:
    import importlib.util

    where = Path(__file__).resolve().parents[2] / "scaler_py" / "app.py"
    spec = importlib.util.spec_from_file_location("scaler_py_app", where)
    assert spec is not None and spec.loader is not None
    scaler = importlib.util.module_from_spec(spec)
    sys.modules["scaler_py_app"] = scaler  # dataclasses look their module up
    spec.loader.exec_module(scaler)

    def moments(xs: list[float]) -> tuple[int, float, float]:
        n = len(xs)
        mean = sum(xs) / n if n else 0.0
        return n, mean, sum((x - mean) ** 2 for x in xs)

    xs = [((i * 7919) % 1000) * 0.37 + 1e6 for i in range(1000)]
    whole = moments(xs)
    merged = (0, 0.0, 0.0)
    for i in range(0, 1000, 77):
        merged = scaler.merge_moments(merged, moments(xs[i : i + 77]))
    assert merged[0] == whole[0]
    assert abs(merged[1] - whole[1]) < 1e-9 * abs(whole[1])
    assert abs(merged[2] - whole[2]) < 1e-9 * whole[2]
    assert scaler.merge_moments((0, 0.0, 0.0), (3, 1.0, 2.0)) == (3, 1.0, 2.0)


def test_what_cannot_cross_calls_or_json_is_refused_by_name() -> None:
    f = wp._Fitting(Sums)
    f.fit_open(wp.Task("t", "s", 0, 1, 0), None)
    f.state["kept"] = wp.Column(7)  # a host handle, meaningless in the instance that merges
    with pytest.raises(wp.StageError, match="a Column is a handle to data held by the host"):
        f.fit_close()
    with pytest.raises(wp.StageError, match="key 0 at .weights is not a string"):
        wp.encode_model({"weights": {0: 1.5}})
    assert json.loads(wp._report_json({"auc": float("nan"), "inner": Inner(lo=float("inf")), "n": [1, 2.5]})) == {
        "auc": None,
        "inner": {"lo": None},
        "n": [1, 2.5],
    }, "as the Rust SDK writes a report: non-finite numbers are null"


def test_a_failed_open_leaves_no_earlier_state_behind() -> None:
    f = wp._Fitting(Sums)
    f.fit_open(wp.Task("t", "s", 0, 1, 0), None)
    f.fit_batch(wp.Batch([1.0, 2.0]))
    with pytest.raises(wp.StageError, match="cannot decode the carry"):
        f.fit_open(wp.Task("t", "s", 0, 1, 1), b"corrupt")
    with pytest.raises(wp.StageError, match="fit_batch called before fit_open"):
        f.fit_batch(wp.Batch([3.0]))


def test_a_method_returning_something_else_than_a_batch_is_named() -> None:
    class Lists(Sums):
        def apply(self, model: dict, batch: "wp.Batch") -> list:  # type: ignore[override]
            return [1.0]

    f = wp._Fitting(Lists)
    f.open(wp.Task("t", "s", 0, 1, 0), b'{"mean": 1.0}')
    with pytest.raises(wp.StageError, match="apply returned list: it returns a wp.Batch"):
        f.transform(wp.Batch([1.0]))
    with pytest.raises(wp.StageError, match="cannot encode the carry of NextPass"):
        wp._encode_state({"c": wp.Column(1)}, "carry of NextPass")
    assert json.loads(wp.encode_model({"inner": [Inner(lo=1.0)]})) == {"inner": [{"lo": 1.0}]}


def test_an_aggregators_undefined_metric_is_null_an_estimators_nan_an_error() -> None:
    class Undefined(Sums):
        def finalize(self, state: dict, pass_: int) -> "wp.Done":
            return wp.Done({"precision": float("nan"), "rows": state["n"]})

    for aggregator, expected in [(True, {"precision": None, "rows": 0}), (False, None)]:
        f = wp._Fitting(Undefined, aggregator=aggregator)
        f.fit_open(wp.Task("t", "s", 0, 1, 0), None)
        state = f.fit_close()
        if expected is None:
            with pytest.raises(wp.StageError, match="cannot encode the model as JSON"):
                f.finalize(state, 0)
        else:
            assert json.loads(f.finalize(state, 0)[1]) == expected

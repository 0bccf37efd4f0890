"""wasmpipe_sdk: wasmpipe stages in Python, on the same WIT contract as Rust
stages (`wit/`), built into a component by `wasmpipe build` (with
componentize-py).

The data stays in the host. A `Batch` or `Column` is a handle; the
methods on a column (`summarize`, `standardize`, `compare`, arithmetic...)
run as native kernels in the host and return new handles, so a stage that
only orchestrates them runs at native speed. Values enter the interpreter
only when asked for (`Column.to_list`), and leave it in bulk
(`Column.from_floats`, `from_strings`...).

A transformer::

    from dataclasses import dataclass
    import wasmpipe_sdk as wp

    @dataclass
    class Config:
        column: str
        lo: float = 0.0
        hi: float = 1.0

    class Clip(wp.Transformer):
        def open(self, task):
            self.config = wp.config(Config)   # unknown or misspelt keys fail here

        def transform(self, batch):
            x = batch.column(self.config.column)
            return batch.with_column(self.config.column, x.clamp(self.config.lo, self.config.hi))

    Transform = wp.export_transformer(Clip)

The stage's own object (`Clip()` above) is made by `open` and kept here,
in this module, until `close`: one component instance runs one task.
componentize-py runs the module's top-level code once, at build time, and
snapshots it; the component has no files when it runs, so import
everything at the top of the module.

An estimator learns a model from every partition, then applies it
(`Estimator`, exported with `export_estimator`); an aggregator folds its
input into one result (`Estimator` with no `apply`, exported with
`export_aggregator`). See `Estimator`.

Errors: `wp.fail(...)` fails the task with a message (a `stage-failed`
error), `wp.ConfigError` (raised by `config`) is an `invalid-config`
error; any other exception fails the task with its type, message and
line, and its traceback in the stage log.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import gc
import json
import math
import pickle
import traceback
import types as pytypes
import typing
from typing import Any, Iterable, Mapping, Optional, Sequence, TypeVar, Union

__all__ = [
    "Batch",
    "Column",
    "ConfigError",
    "Done",
    "Estimator",
    "NextPass",
    "StageError",
    "Task",
    "Transformer",
    "config",
    "debug",
    "error",
    "export_aggregator",
    "export_estimator",
    "export_transformer",
    "fail",
    "gram",
    "hash_rows",
    "info",
    "matvec",
    "metrics_table",
    "parse_config",
    "quarantine",
    "report",
    "warn",
]

T = TypeVar("T")


def _wit() -> Any:
    """The bindings componentize-py generates for the stage's world (only
    inside a component: the SDK's pure parts also run under CPython)."""
    from wit_world.imports import host, kernels, types  # type: ignore[import-not-found]

    return host, kernels, types


class StageError(Exception):
    """The stage gives up: fails its task with this message."""


class ConfigError(StageError):
    """The stage's configuration is wrong: the message names the key."""


class _BadInput(StageError):
    """Bytes the host handed over (a state, carry or model) are not what
    this stage writes: an `invalid-argument` error, as in Rust."""


def fail(message: str) -> typing.NoReturn:
    """Fail the task with `message` (a `stage-failed` error)."""
    raise StageError(message)


# Configuration -------------------------------------------------------------


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """`value` as the annotation `hint` wants it, or ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Union or origin is pytypes.UnionType:
        if value is None and type(None) in args:
            return None
        for arm in (a for a in args if a is not type(None)):
            try:
                return _check_type(key, value, arm)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {hint}, got {value!r}")
    if origin in (list, collections.abc.Sequence) or hint is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return _build(hint, value, f"{key}.")
    return value


def _build(cls: type[T], doc: Mapping[str, Any], prefix: str = "") -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (this stage takes: {known})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in doc:
            values[name] = _check_type(prefix + name, doc[name], hints.get(name, Any))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: missing (this stage needs it)")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:  # a field without init, a __post_init__ check
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def parse_config(cls: Optional[type[T]], text: str) -> Any:
    """The configuration document `text` (JSON) as the dataclass `cls`:
    unknown and missing keys and wrong types are ConfigErrors naming the
    key. Without `cls`, the document as parsed."""
    doc = json.loads(text) if text.strip() else {}
    if cls is None:
        return doc
    if not isinstance(doc, dict):
        raise ConfigError(f"the configuration is not a table: {text!r}")
    return _build(cls, doc)


def config(cls: Optional[type[T]] = None) -> Any:
    """The stage's `config` table from the manifest, as the dataclass `cls`
    (or a dict without one)."""
    host, _, _ = _wit()
    return parse_config(cls, host.config())


# Logging and publishing ------------------------------------------------------


def _log(level: str, message: str) -> None:
    host, _, _ = _wit()
    host.log(getattr(host.Level, level), message)


def debug(message: str) -> None:
    _log("DEBUG", message)


def info(message: str) -> None:
    _log("INFO", message)


def warn(message: str) -> None:
    _log("WARN", message)


def error(message: str) -> None:
    _log("ERROR", message)


def quarantine(rows: Batch, reasons: Column) -> None:
    """Set `rows` aside in the stage's quarantine, each with its reason."""
    host, _, _ = _wit()
    host.quarantine(rows.raw, reasons.raw)


def report(doc: Any, table: Optional[Batch] = None) -> None:
    """Publish the stage's report (JSON-serializable), with an optional
    table of rows (`metrics_table` makes the usual one). The host takes
    a report from an estimator's or aggregator's `finalize` only, when it
    returns `Done`; a later call replaces an earlier one."""
    host, _, _ = _wit()
    host.report(_report_json(doc), None if table is None else table.raw)


def _report_json(doc: Any) -> str:
    """A report as JSON, written as the Rust SDK writes one: a dataclass
    as a dict, NaN and infinities as null."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = dataclasses.asdict(v)
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    try:
        return json.dumps(plain(doc), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StageError(f"cannot encode the report as JSON: {e}") from None


def metrics_table(rows: Iterable[tuple[str, Optional[str], float]]) -> Batch:
    """A table for `report`: one row per `(metric, class, value)`, with
    `class` None for metrics of the whole data set (a label, written as
    text: 0 becomes "0"); the shape every
    evaluation stage reports in, so runs compare in one query."""
    rows = list(rows)
    return Batch.from_columns({
        "metric": Column.from_strings([r[0] for r in rows]),
        "class": Column.from_strings([None if r[1] is None else str(r[1]) for r in rows]),
        "value": Column.from_floats([float(r[2]) for r in rows]),
    })  # fmt: skip


# Data ----------------------------------------------------------------------

_COMPARE = {"==": "EQ", "!=": "NE", "<": "LT", "<=": "LE", ">": "GT", ">=": "GE"}
_TYPES = ("boolean", "int32", "int64", "float32", "float64", "utf8")


def _data_type(name: str) -> Any:
    _, _, types = _wit()
    if name not in _TYPES:
        raise StageError(f"type {name!r}: one of {', '.join(_TYPES)}")
    return getattr(types, "DataType_" + name.capitalize())()


def _type_name(dt: Any) -> str:
    return type(dt).__name__.removeprefix("DataType_").lower()


class _Handle:
    """Host data, by handle: valid only in the instance that holds it."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a {type(self).__name__} is a handle to data held by the host, valid only in this call's "
            "instance; keep values or summaries in the state (e.g. summarize(), to_list())"
        )


_FROM = {"f64": "floats", "i64": "ints", "bool": "bools"}
_KIND_TEXT = {"f64": "a float", "i64": "a 64-bit integer", "bool": "a bool"}


def _fits(kind: str, v: Any) -> bool:
    if kind == "f64":
        return isinstance(v, (int, float))
    if kind == "i64":
        return isinstance(v, int) and -(2**63) <= v < 2**63
    return isinstance(v, bool)


class Column(_Handle):
    """A column held by the host. Methods run as host kernels and return
    new columns; `to_list` copies the values in."""

    __slots__ = ()

    # Construction (copies out, in bulk). None is null, as `to_list` gives it.
    @staticmethod
    def _build(kind: str, values: Sequence[Any], validity: Optional[Sequence[bool]], null: Any) -> Column:
        _, _, types = _wit()
        values = list(values)
        if validity is None and any(v is None for v in values):
            validity = [v is not None for v in values]
            values = [null if v is None else v for v in values]
        elif validity is not None:
            values = [null if v is None else v for v in values]
        try:
            return Column(getattr(types.Column, "from_" + kind)(values, None if validity is None else list(validity)))
        except (TypeError, OverflowError, ValueError) as e:
            bad = next((v for v in values if not _fits(kind, v)), None)
            raise StageError(f"Column.from_{_FROM[kind]}: {bad!r} is not {_KIND_TEXT[kind]} ({e})") from None

    @staticmethod
    def from_floats(values: Sequence[Optional[float]], validity: Optional[Sequence[bool]] = None) -> Column:
        return Column._build("f64", values, validity, 0.0)

    @staticmethod
    def from_ints(values: Sequence[Optional[int]], validity: Optional[Sequence[bool]] = None) -> Column:
        return Column._build("i64", values, validity, 0)

    @staticmethod
    def from_bools(values: Sequence[Optional[bool]], validity: Optional[Sequence[bool]] = None) -> Column:
        return Column._build("bool", values, validity, False)

    @staticmethod
    def from_strings(values: Sequence[Optional[str]]) -> Column:
        _, _, types = _wit()
        values = list(values)
        bad = next((v for v in values if v is not None and not isinstance(v, str)), None)
        if bad is not None:
            raise StageError(f"Column.from_strings: {bad!r} is not a string (or None)")
        return Column(types.Column.from_utf8(values))

    # Metadata (copies nothing).
    def __len__(self) -> int:
        return self.raw.len()

    @property
    def data_type(self) -> str:
        """`float64`, `int64`, `utf8`... or the Arrow name of another type."""
        dt = self.raw.data_type()
        return dt.value if _type_name(dt) == "other" else _type_name(dt)

    @property
    def null_count(self) -> int:
        return self.raw.null_count()

    def to_list(self) -> list[Any]:
        """The values, copied into the interpreter (None where null)."""
        name = self.data_type
        read = {
            "float64": self.raw.read_f64, "float32": self.raw.read_f32, "int64": self.raw.read_i64,
            "int32": self.raw.read_i32, "boolean": self.raw.read_bool, "utf8": self.raw.read_utf8,
        }.get(name)  # fmt: skip
        if read is None:
            fail(f"a {name} column cannot be read into Python; cast it first")
        values = read()
        if name == "utf8" or self.raw.null_count() == 0:
            return values
        valid = self.raw.validity()
        return [v if ok else None for v, ok in zip(values, valid)]

    # Kernels.
    def _arith(self, op: str, other: Union[Column, float]) -> Column:
        _, k, _ = _wit()
        if isinstance(other, Column):
            return Column(k.arith_columns(getattr(k.Arith, op), self.raw, other.raw))
        return Column(k.arith_scalar(getattr(k.Arith, op), self.raw, float(other)))

    def __add__(self, other: Union[Column, float]) -> Column:
        return self._arith("ADD", other)

    def __sub__(self, other: Union[Column, float]) -> Column:
        return self._arith("SUB", other)

    def __mul__(self, other: Union[Column, float]) -> Column:
        return self._arith("MUL", other)

    def __truediv__(self, other: Union[Column, float]) -> Column:
        return self._arith("DIV", other)

    def __rsub__(self, other: float) -> Column:
        return (-self) + other

    def __rtruediv__(self, other: float) -> Column:
        return (self * 0.0 + other) / self

    __radd__ = __add__
    __rmul__ = __mul__

    def __neg__(self) -> Column:
        return self._map("NEG")

    def _map(self, op: str) -> Column:
        _, k, _ = _wit()
        return Column(k.map_unary(getattr(k.Unary, op), self.raw))

    def abs(self) -> Column:
        return self._map("ABS")

    def sqrt(self) -> Column:
        return self._map("SQRT")

    def exp(self) -> Column:
        return self._map("EXP")

    def ln(self) -> Column:
        return self._map("LN")

    def pow(self, exponent: float) -> Column:
        _, k, _ = _wit()
        return Column(k.pow(self.raw, float(exponent)))

    def clamp(self, lo: float, hi: float) -> Column:
        _, k, _ = _wit()
        return Column(k.clamp(self.raw, float(lo), float(hi)))

    def standardize(self, center: float, scale: float) -> Column:
        """`(x - center) / scale`, fused."""
        _, k, _ = _wit()
        return Column(k.standardize(self.raw, float(center), float(scale)))

    def fill_null(self, value: float) -> Column:
        _, k, _ = _wit()
        return Column(k.fill_null(self.raw, float(value)))

    def cast(self, to: str) -> Column:
        _, k, _ = _wit()
        return Column(k.cast(self.raw, _data_type(to)))

    def compare(self, op: str, other: Union[Column, float]) -> Column:
        """A boolean mask of `self op other`; `op` is one of `==`, `!=`,
        `<`, `<=`, `>`, `>=`."""
        _, k, _ = _wit()
        if op not in _COMPARE:
            fail(f"compare: {op!r} is not one of {' '.join(_COMPARE)}")
        which = getattr(k.Compare, _COMPARE[op])
        if isinstance(other, Column):
            return Column(k.compare_columns(which, self.raw, other.raw))
        return Column(k.compare_scalar(which, self.raw, float(other)))

    def __and__(self, other: Column) -> Column:
        _, k, _ = _wit()
        return Column(k.and_(self.raw, other.raw))

    def __or__(self, other: Column) -> Column:
        _, k, _ = _wit()
        return Column(k.or_(self.raw, other.raw))

    def __invert__(self) -> Column:
        _, k, _ = _wit()
        return Column(k.not_(self.raw))

    def is_null(self) -> Column:
        _, k, _ = _wit()
        return Column(k.is_null(self.raw))

    def is_nan(self) -> Column:
        _, k, _ = _wit()
        return Column(k.is_nan(self.raw))

    def choose(self, then: Column, otherwise: Column) -> Column:
        """For a mask: `then` where true, `otherwise` where false."""
        _, k, _ = _wit()
        return Column(k.if_then_else(self.raw, then.raw, otherwise.raw))

    def filter(self, mask: Column) -> Column:
        _, k, _ = _wit()
        return Column(k.filter(self.raw, mask.raw))

    def summarize(self) -> Any:
        """Count, nulls, NaNs, sum, mean, m2 (the sum of squared
        deviations), min and max of the values, in one host pass."""
        _, k, _ = _wit()
        return k.summarize(self.raw)

    def dot(self, other: Column) -> float:
        _, k, _ = _wit()
        return k.dot(self.raw, other.raw)

    def histogram(self, bins: int, lo: float, hi: float) -> list[int]:
        _, k, _ = _wit()
        return k.histogram(self.raw, bins, float(lo), float(hi))

    def distinct_count(self) -> int:
        _, k, _ = _wit()
        return k.distinct_count(self.raw)


def hash_rows(columns: Iterable[Column], seed: int = 0) -> Column:
    """A 64-bit hash of each row of `columns` (uint64)."""
    _, k, _ = _wit()
    return Column(k.hash_rows([c.raw for c in columns], seed))


def matvec(columns: Iterable[Column], weights: Sequence[float], bias: float = 0.0) -> Column:
    """`bias + sum_j weights[j] * columns[j]`, row by row."""
    _, k, _ = _wit()
    return Column(k.matvec([c.raw for c in columns], [float(w) for w in weights], float(bias)))


def gram(features: Iterable[Column], target: Column, intercept: bool = True) -> Any:
    """X^T X and X^T y over the rows where every value is finite."""
    _, k, _ = _wit()
    return k.gram([c.raw for c in features], target.raw, intercept)


class Batch(_Handle):
    """A batch of rows held by the host."""

    __slots__ = ()

    @staticmethod
    def from_columns(columns: Mapping[str, Column]) -> Batch:
        _, _, types = _wit()
        return Batch(types.Batch.from_columns([(name, c.raw) for name, c in columns.items()]))

    @property
    def num_rows(self) -> int:
        return self.raw.num_rows()

    def __len__(self) -> int:
        return self.raw.num_rows()

    @property
    def schema(self) -> list[tuple[str, str]]:
        """(name, type) of each column, in order."""
        return [(f.name, f.data_type.value if _type_name(f.data_type) == "other" else _type_name(f.data_type))
                for f in self.raw.schema()]  # fmt: skip

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.raw.schema()]

    def column(self, name: str) -> Column:
        return Column(self.raw.column(name))

    def __getitem__(self, name: str) -> Column:
        return self.column(name)

    def with_column(self, name: str, values: Column) -> Batch:
        """This batch with `name` added, or replaced in place."""
        return Batch(self.raw.with_column(name, values.raw))

    def select(self, names: Sequence[str]) -> Batch:
        return Batch(self.raw.select(list(names)))

    def drop(self, names: Sequence[str]) -> Batch:
        return Batch(self.raw.drop_columns(list(names)))

    def filter(self, mask: Column) -> Batch:
        return Batch(self.raw.filter(mask.raw))

    def slice(self, offset: int, length: int) -> Batch:
        return Batch(self.raw.slice(offset, length))


# Stages ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """Which task this is: the pipeline, the stage, its partition of
    `partitions`, and the fit pass."""

    pipeline: str
    stage: str
    partition: int
    partitions: int
    pass_: int


class Transformer:
    """A parallel map: subclass it, override `transform` (and `open`,
    `close` where needed), and export it with `export_transformer`."""

    def open(self, task: Task) -> None:  # noqa: B027 (optional)
        """Start a task: read the configuration here, so a bad one fails
        before any data moves."""

    def transform(self, batch: Batch) -> Optional[Batch]:
        """One input batch in, one (or none) out; every output batch of a
        stage has the same schema."""
        return batch

    def close(self) -> Optional[Batch]:
        """End the task, optionally with a last batch."""
        return None


@dataclasses.dataclass(frozen=True)
class Done:
    """`finalize`'s answer when fitting is done: the model (an
    estimator's, applied by `apply`) or an aggregator's result."""

    model: Any


@dataclasses.dataclass(frozen=True)
class NextPass:
    """`finalize`'s answer when another pass over the data is needed:
    every partition's next `begin` receives `carry` (current weights...)."""

    carry: Any


class Estimator:
    """Learns from every partition in parallel, in the style of Spark ML's
    Estimator (and the Rust SDK's): each partition's batches fold into a
    partial state (`begin`, then `update` for each batch), states merge
    pairwise (`merge`, associative), and the merged state finalizes into
    `Done(model)` or, for iterative fits, `NextPass(carry)`, which starts
    another pass with `carry` handed to every partition's `begin`.

    An estimator (`export_estimator`) then applies its model to every
    partition with `apply`; an aggregator (`export_aggregator`) writes no
    rows: its model is the stage's result, and its `finalize` may publish
    a `report`.

    States and carries may be any picklable Python values (NaN and
    infinities included); a model is JSON (dicts, lists, numbers, strings,
    or a dataclass, written as a dict; NaN is refused in an estimator's
    model and written as null in an aggregator's result), as Rust stages'
    models are, so the model registry and the run report can read it.

    Each call may run in a fresh component instance: keep what one call
    needs in the state, not on `self` (`begin` and `update` share one
    object per partition; `merge`, `finalize` and `apply` get their own).
    """

    def begin(self, task: Task, carry: Any) -> Any:
        """The empty state of one partition in pass `task.pass_`; `carry`
        is None in pass 0, then the previous `NextPass`'s. Read the
        configuration here, so a bad one fails before any data moves."""
        raise NotImplementedError("an Estimator defines begin(task, carry)")

    def update(self, state: Any, batch: Batch) -> Any:
        """Fold one batch into `state`; return the new state (or None when
        `state` was changed in place)."""
        raise NotImplementedError("an Estimator defines update(state, batch)")

    def merge(self, left: Any, right: Any) -> Any:
        """Combine two partial states of the same pass (associative)."""
        raise NotImplementedError("an Estimator defines merge(left, right)")

    def finalize(self, state: Any, pass_: int) -> Union[Done, NextPass]:
        """`Done(model)` or `NextPass(carry)` from the fully merged state."""
        raise NotImplementedError("an Estimator defines finalize(state, pass_)")

    def prepare(self, task: Task, model: Any) -> Any:
        """Start applying the model to a partition: what `apply` receives
        as its model (by default the model as decoded from JSON)."""
        return model

    def apply(self, model: Any, batch: Batch) -> Optional[Batch]:
        """Map one batch with the fitted model (estimators only)."""
        raise NotImplementedError("an estimator defines apply(model, batch)")


def _error(e: BaseException) -> Any:
    """The WIT error for a StageError (None for other exceptions)."""
    _, _, types = _wit()
    if isinstance(e, ConfigError):
        return types.Error_InvalidConfig(str(e))
    if isinstance(e, _BadInput):
        return types.Error_InvalidArgument(str(e))
    if isinstance(e, StageError):
        return types.Error_StageFailed(str(e))
    return None


def _guard(call: Any) -> Any:
    """Run `call`, turning a StageError into the WIT error it stands for
    and any other exception into a `stage-failed` error that names it,
    its traceback in the stage log; the host's own errors pass as they
    are."""
    from componentize_py_types import Err  # type: ignore[import-not-found]

    try:
        return call()
    except Err:
        raise
    except StageError as e:
        raise Err(_error(e)) from None
    except Exception as e:
        _log("ERROR", traceback.format_exc().rstrip())
        _, _, types = _wit()
        where = traceback.extract_tb(e.__traceback__)[-1]
        said = f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno}, in {where.name}; the traceback is in the stage log)"
        raise Err(types.Error_StageFailed(said)) from None


def _batch_or_none(out: Any, method: str) -> Optional[Batch]:
    if out is None or isinstance(out, Batch):
        return out
    fail(f"{method} returned {type(out).__name__}: it returns a wp.Batch (or None, for no rows)")


def _task(info: Any) -> Task:
    return Task(info.pipeline, info.stage, info.partition, info.partitions, info.pass_)


def encode_model(model: Any, nan_as_null: bool = False) -> bytes:
    """A model as the bytes the host keeps: JSON (a dataclass as a dict).
    NaN and infinities are refused in a model, and written as null in an
    aggregator's result (`nan_as_null`), as in its report: a metric can be
    undefined."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return plain(dataclasses.asdict(v))
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if nan_as_null and isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    model = plain(model)

    def keys(v: Any, at: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise StageError(
                        f"cannot encode the model as JSON: key {k!r} at {at or 'the top'} is not a string "
                        "(JSON would turn it into one); use str keys or a list"
                    )
                keys(x, f"{at}.{k}")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                keys(x, f"{at}[{i}]")

    keys(model, "")
    try:
        return json.dumps(model, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        raise StageError(f"cannot encode the model as JSON: {e}") from None


def decode_model(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise _BadInput(f"cannot decode the model: {e}") from None


def _encode_state(state: Any, what: str = "partial state") -> bytes:
    try:
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # pickling raises several types
        raise StageError(f"cannot encode the {what} ({type(state).__name__}): {e}") from None


def _decode_state(data: bytes, what: str) -> Any:
    try:
        return pickle.loads(data)
    except Exception as e:
        raise _BadInput(f"cannot decode the {what}: {e}") from None


class _Fitting:
    """The `fit` interface over an Estimator class, with the partition's
    object and state kept between calls (one instance runs one task). Pure
    Python: the SDK's tests drive it under CPython."""

    def __init__(self, cls: type[Estimator], aggregator: bool = False) -> None:
        self.cls = cls
        self.aggregator = aggregator
        self.stage: Optional[Estimator] = None
        self.state: Any = None
        self.model: Any = None

    def fit_open(self, task: Task, carry: Optional[bytes]) -> None:
        self.stage, self.state = None, None
        stage = self.cls()
        self.state = stage.begin(task, None if carry is None else _decode_state(carry, "carry"))
        self.stage = stage

    def fit_batch(self, batch: Batch) -> None:
        if self.stage is None:
            fail("fit_batch called before fit_open")
        updated = self.stage.update(self.state, batch)
        if updated is not None:
            self.state = updated

    def fit_close(self) -> bytes:
        if self.stage is None:
            fail("fit_close called before fit_open")
        data = _encode_state(self.state)
        self.stage, self.state = None, None
        return data

    def merge(self, left: bytes, right: bytes) -> bytes:
        merged = self.cls().merge(_decode_state(left, "left state"), _decode_state(right, "right state"))
        return _encode_state(merged)

    def finalize(self, state: bytes, pass_: int) -> tuple[str, bytes]:
        """("done", model bytes) or ("next", carry bytes)."""
        out = self.cls().finalize(_decode_state(state, "merged state"), pass_)
        if isinstance(out, Done):
            return "done", encode_model(out.model, nan_as_null=self.aggregator)
        if isinstance(out, NextPass):
            return "next", _encode_state(out.carry, "carry of NextPass")
        fail(f"finalize returned {type(out).__name__}: it returns wp.Done(model) or wp.NextPass(carry)")

    def open(self, task: Task, model: Optional[bytes]) -> None:
        self.stage, self.model = None, None
        if model is None:
            raise _BadInput("this estimator's transform needs its fitted model, and the host passed none")
        stage = self.cls()
        self.model = stage.prepare(task, decode_model(model))
        self.stage = stage

    def transform(self, batch: Batch) -> Optional[Batch]:
        if self.stage is None:
            fail("transform called before open")
        return _batch_or_none(self.stage.apply(self.model, batch), "apply")

    def close(self) -> None:
        self.stage, self.model = None, None


def _exports() -> Any:
    """componentize-py's export protocols, or None under CPython (outside
    a component there is nothing to export).

    Inside a component this runs at build time, where componentize-py
    snapshots the interpreter after the stage's module is imported; every
    task starts from that snapshot. The objects alive then are moved out of
    the garbage collector's sight (`gc.freeze`, as before a fork): without
    it, each task's first collection walks the whole snapshot's heap."""
    try:
        from wit_world import exports  # type: ignore[import-not-found]
    except ModuleNotFoundError as e:
        if e.name not in ("wit_world", "wit_world.exports"):
            raise
        return None
    gc.collect()
    gc.freeze()
    return exports


def _fit_export(exports: Any, fitting: _Fitting) -> type:
    from wit_world.exports import fit  # type: ignore[import-not-found]

    class Fit(exports.Fit):  # type: ignore[misc]
        def fit_open(self, task: Any, carry: Optional[bytes]) -> None:
            _guard(lambda: fitting.fit_open(_task(task), carry))

        def fit_batch(self, input: Any) -> None:
            _guard(lambda: fitting.fit_batch(Batch(input)))

        def fit_close(self) -> bytes:
            return _guard(fitting.fit_close)

        def merge(self, left: bytes, right: bytes) -> bytes:
            return _guard(lambda: fitting.merge(left, right))

        def finalize(self, state: bytes, pass_: int) -> Any:
            which, data = _guard(lambda: fitting.finalize(state, pass_))
            return fit.FitOutcome_Done(data) if which == "done" else fit.FitOutcome_NextPass(data)

    return Fit


def export_estimator(cls: type[Estimator]) -> tuple[type, type]:
    """The classes componentize-py exports for the `estimator` world:
    bind them as `Fit, Transform = wp.export_estimator(MyEstimator)`."""
    exports = _exports()
    if exports is None:
        return cls, cls
    fitting = _Fitting(cls)

    class Transform(exports.Transform):  # type: ignore[misc]
        def open(self, task: Any, model: Optional[bytes]) -> None:
            _guard(lambda: fitting.open(_task(task), model))

        def transform(self, input: Any) -> Any:
            out = _guard(lambda: fitting.transform(Batch(input)))
            return None if out is None else out.raw

        def close(self) -> Any:
            fitting.close()
            return None

    return _fit_export(exports, fitting), Transform


def export_aggregator(cls: type[Estimator]) -> type:
    """The class componentize-py exports for the `aggregator` world: bind
    it as `Fit = wp.export_aggregator(MyAggregator)`."""
    exports = _exports()
    if exports is None:
        return cls
    return _fit_export(exports, _Fitting(cls, aggregator=True))


def export_transformer(cls: type[Transformer]) -> type:
    """The class componentize-py exports for the `transformer` world (name
    it `Transform` in the stage's module): each task gets one `cls()`."""
    exports = _exports()
    if exports is None:
        return cls

    held: dict[str, Transformer] = {}

    def stage() -> Transformer:
        if "stage" not in held:
            fail("transform called before open")
        return held["stage"]

    class Transform(exports.Transform):  # type: ignore[misc]
        def open(self, task: Any, model: Optional[bytes]) -> None:
            def start() -> None:
                held["stage"] = cls()
                held["stage"].open(_task(task))

            _guard(start)

        def transform(self, input: Any) -> Any:
            out = _guard(lambda: _batch_or_none(stage().transform(Batch(input)), "transform"))
            return None if out is None else out.raw

        def close(self) -> Any:
            out = _guard(lambda: _batch_or_none(stage().close(), "close"))
            held.clear()
            return None if out is None else out.raw

    return Transform

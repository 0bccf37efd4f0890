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

Errors: `wp.fail(...)` fails the task with a message (a `stage-failed`
error), `wp.ConfigError` (raised by `config`) is an `invalid-config`
error; any other exception traps the call, and its traceback reaches the
stage log.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import types as pytypes
import typing
from typing import Any, Iterable, Mapping, Optional, Sequence, TypeVar, Union

__all__ = [
    "Batch",
    "Column",
    "ConfigError",
    "StageError",
    "Task",
    "Transformer",
    "config",
    "debug",
    "error",
    "export_transformer",
    "fail",
    "gram",
    "hash_rows",
    "info",
    "matvec",
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
    table of rows. The host takes reports from a fitting stage's
    `finalize`, which Python stages do not have yet."""
    host, _, _ = _wit()
    host.report(json.dumps(doc), None if table is None else table.raw)


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


class Column:
    """A column held by the host. Methods run as host kernels and return
    new columns; `to_list` copies the values in."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    # Construction (copies out, in bulk).
    @staticmethod
    def from_floats(values: Sequence[float], validity: Optional[Sequence[bool]] = None) -> Column:
        _, _, types = _wit()
        return Column(types.Column.from_f64(list(values), None if validity is None else list(validity)))

    @staticmethod
    def from_ints(values: Sequence[int], validity: Optional[Sequence[bool]] = None) -> Column:
        _, _, types = _wit()
        return Column(types.Column.from_i64(list(values), None if validity is None else list(validity)))

    @staticmethod
    def from_bools(values: Sequence[bool], validity: Optional[Sequence[bool]] = None) -> Column:
        _, _, types = _wit()
        return Column(types.Column.from_bool(list(values), None if validity is None else list(validity)))

    @staticmethod
    def from_strings(values: Sequence[Optional[str]]) -> Column:
        _, _, types = _wit()
        return Column(types.Column.from_utf8(list(values)))

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


class Batch:
    """A batch of rows held by the host."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

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


def _error(e: BaseException) -> Any:
    """The WIT error for a StageError (None for other exceptions)."""
    _, _, types = _wit()
    if isinstance(e, ConfigError):
        return types.Error_InvalidConfig(str(e))
    if isinstance(e, StageError):
        return types.Error_StageFailed(str(e))
    return None


def _guard(call: Any) -> Any:
    """Run `call`, turning a StageError into the WIT error it stands for;
    other exceptions (and the host's own errors) pass as they are."""
    from componentize_py_types import Err  # type: ignore[import-not-found]

    try:
        return call()
    except StageError as e:
        raise Err(_error(e)) from None


def export_transformer(cls: type[Transformer]) -> type:
    """The class componentize-py exports for the `transformer` world (name
    it `Transform` in the stage's module): each task gets one `cls()`."""
    try:
        from wit_world import exports  # type: ignore[import-not-found]
    except ModuleNotFoundError as e:  # under CPython, outside a component: nothing to export
        if e.name not in ("wit_world", "wit_world.exports"):
            raise
        return cls

    held: dict[str, Transformer] = {}

    def stage() -> Transformer:
        if "stage" not in held:
            fail("transform called before open")
        return held["stage"]

    class Transform(exports.Transform):  # type: ignore[misc]
        def open(self, task: Any, model: Optional[bytes]) -> None:
            t = Task(task.pipeline, task.stage, task.partition, task.partitions, task.pass_)
            def start() -> None:
                held["stage"] = cls()
                held["stage"].open(t)

            _guard(start)

        def transform(self, input: Any) -> Any:
            out = _guard(lambda: stage().transform(Batch(input)))
            return None if out is None else out.raw

        def close(self) -> Any:
            out = _guard(lambda: stage().close())
            held.clear()
            return None if out is None else out.raw

    return Transform

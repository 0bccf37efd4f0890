"""`stages/scaler_py`'s logic computed in the interpreter: each column is
copied in (`to_list`), its moments computed in Python, and the scaled
values copied back out (`Column.from_floats`). What a Python UDF engine
that moves the data into the interpreter does; only for the benchmark."""

from __future__ import annotations

import math
from dataclasses import dataclass

import wasmpipe_sdk as wp


@dataclass
class Config:
    columns: list[str]


def merge_moments(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    if a[0] == 0:
        return b
    if b[0] == 0:
        return a
    n = a[0] + b[0]
    delta = b[1] - a[1]
    return n, a[1] + delta * (b[0] / n), a[2] + b[2] + delta * delta * (float(a[0]) * float(b[0]) / n)


def moments(values: list) -> tuple[int, float, float]:
    xs = [x for x in values if x is not None and x == x]
    n = len(xs)
    if n == 0:
        return 0, 0.0, 0.0
    mean = math.fsum(xs) / n
    return n, mean, math.fsum((x - mean) ** 2 for x in xs)


class CopyingScaler(wp.Estimator):
    def begin(self, task: wp.Task, carry: None) -> dict:
        columns = wp.config(Config).columns
        return {"columns": columns, "moments": [(0, 0.0, 0.0)] * len(columns)}

    def update(self, state: dict, batch: wp.Batch) -> None:
        for i, name in enumerate(state["columns"]):
            state["moments"][i] = merge_moments(state["moments"][i], moments(batch.column(name).to_list()))

    def merge(self, left: dict, right: dict) -> dict:
        left["moments"] = [merge_moments(a, b) for a, b in zip(left["moments"], right["moments"])]
        return left

    def finalize(self, state: dict, pass_: int) -> wp.Done:
        std = [math.sqrt(m2 / n) if n else 0.0 for n, _, m2 in state["moments"]]
        return wp.Done({
            "columns": state["columns"],
            "mean": [m[1] for m in state["moments"]],
            "std": [s if s != 0.0 else 1.0 for s in std],
        })  # fmt: skip

    def apply(self, model: dict, batch: wp.Batch) -> wp.Batch:
        for name, mean, std in zip(model["columns"], model["mean"], model["std"]):
            values = batch.column(name).to_list()
            scaled = [0.0 if x is None else (x - mean) / std for x in values]
            batch = batch.with_column(name, wp.Column.from_floats(scaled, [x is not None for x in values]))
        return batch


Fit, Transform = wp.export_estimator(CopyingScaler)

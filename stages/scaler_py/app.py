"""Standard scaler (estimator, Python): learns each column's mean and
population standard deviation, then maps x to (x - mean) / std, as
scikit-learn's `StandardScaler` and the Rust `scaler` stage do, with the
same arithmetic, so both give the same values.

```toml
[stage.scale.config]
columns = ["age", "bmi"]
```

Both halves run on host kernels (`summarize`, `standardize`): no value
enters the interpreter. Partition states merge exactly with Chan et al.'s
pairwise update; null and NaN values are skipped when fitting and stay
null or NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import wasmpipe_sdk as wp


@dataclass
class Config:
    columns: list[str]


Moments = tuple[int, float, float]  # count, mean, sum of squared deviations


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s pairwise update: the moments of both sets together."""
    if a[0] == 0:
        return b
    if b[0] == 0:
        return a
    n = a[0] + b[0]
    delta = b[1] - a[1]
    mean = a[1] + delta * (b[0] / n)
    m2 = a[2] + b[2] + delta * delta * (float(a[0]) * float(b[0]) / n)
    return n, mean, m2


class Scaler(wp.Estimator):
    def begin(self, task: wp.Task, carry: None) -> dict:
        config = wp.config(Config)
        return {"columns": config.columns, "moments": [(0, 0.0, 0.0)] * len(config.columns)}

    def update(self, state: dict, batch: wp.Batch) -> None:
        # The host summarizes each column natively; no values are copied in.
        for i, name in enumerate(state["columns"]):
            s = batch.column(name).summarize()
            state["moments"][i] = merge_moments(state["moments"][i], (s.count, s.mean, s.m2))

    def merge(self, left: dict, right: dict) -> dict:
        left["moments"] = [merge_moments(a, b) for a, b in zip(left["moments"], right["moments"])]
        return left

    def finalize(self, state: dict, pass_: int) -> wp.Done:
        std = []
        for n, _, m2 in state["moments"]:
            sd = 0.0 if n == 0 else math.sqrt(m2 / n)
            std.append(1.0 if sd == 0.0 else sd)  # a constant column scales by 1, as scikit-learn's
        mean = [m[1] for m in state["moments"]]
        return wp.Done({"columns": state["columns"], "mean": mean, "std": std})

    def apply(self, model: dict, batch: wp.Batch) -> wp.Batch:
        for name, mean, std in zip(model["columns"], model["mean"], model["std"]):
            batch = batch.with_column(name, batch.column(name).standardize(mean, std))
        return batch


Fit, Transform = wp.export_estimator(Scaler)

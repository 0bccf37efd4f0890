"""`{{name}}`, a wasmpipe estimator in Python: it fits the mean of each of
`columns` over every row, then subtracts it (mean centering).

```toml
[stage.{{name}}.config]
columns = ["x", "y"]
```

The fit runs in parallel: each partition sums its rows (`begin`, `update`),
the partial states are merged (`merge`, in any order and grouping), and
`finalize` turns the merged state into the model (`wp.Done`), or asks for
another pass over the data (`wp.NextPass`, for iterative methods). The
model is then applied to every partition (`apply`). The sums and the
subtraction run in the host (kernels): the values never enter the
interpreter. Replace them with what your estimator does.
"""

from __future__ import annotations

from dataclasses import dataclass

import wasmpipe_sdk as wp


@dataclass
class Config:
    columns: list[str]


def merge_states(left: dict, right: dict) -> dict:
    """Two partial fits as one: counts and sums add up."""
    counts = [a + b for a, b in zip(left["counts"], right["counts"])]
    sums = [a + b for a, b in zip(left["sums"], right["sums"])]
    return {"columns": left["columns"], "counts": counts, "sums": sums}


class Stage(wp.Estimator):
    def begin(self, task: wp.Task, carry: None) -> dict:
        columns = wp.config(Config).columns
        return {"columns": columns, "counts": [0] * len(columns), "sums": [0.0] * len(columns)}

    def update(self, state: dict, batch: wp.Batch) -> None:
        for i, name in enumerate(state["columns"]):
            s = batch.column(name).summarize()  # count, sum, mean... of the non-null values
            state["counts"][i] += s.count
            state["sums"][i] += s.sum

    def merge(self, left: dict, right: dict) -> dict:
        return merge_states(left, right)

    def finalize(self, state: dict, pass_: int) -> wp.Done:
        for name, n in zip(state["columns"], state["counts"]):
            if n == 0:
                wp.fail(f"column {name!r} has no values to fit")
        means = [s / n for s, n in zip(state["sums"], state["counts"])]
        wp.info(f"means: {means}")
        # The model: JSON, kept in the model registry and passed to `apply`.
        return wp.Done({"columns": state["columns"], "means": means})

    def apply(self, model: dict, batch: wp.Batch) -> wp.Batch:
        for name, mean in zip(model["columns"], model["means"]):
            batch = batch.with_column(name, batch.column(name) - mean)
        return batch


Fit, Transform = wp.export_estimator(Stage)

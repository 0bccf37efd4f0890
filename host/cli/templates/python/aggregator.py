"""`{{name}}`, a wasmpipe aggregator in Python: it summarizes a column over
every row (rows, mean, minimum, maximum) into one result, the stage's
report.

```toml
[stage.{{name}}.config]
column = "y"
```

An aggregator is the fit half of an estimator: each partition folds its
rows into a partial state in parallel, the states are merged, and
`finalize` turns the merged state into the result (`wp.Done`), also
published as the stage's report. The summaries run in the host
(kernels). Replace them with what your aggregator computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import wasmpipe_sdk as wp


@dataclass
class Config:
    column: str


def merge_states(left: dict, right: dict) -> dict:
    """Two partial summaries as one."""
    return {
        "column": left["column"],
        "rows": left["rows"] + right["rows"],
        "sum": left["sum"] + right["sum"],
        "min": min(left["min"], right["min"]),
        "max": max(left["max"], right["max"]),
    }


class Stage(wp.Estimator):
    def begin(self, task: wp.Task, carry: None) -> dict:
        column = wp.config(Config).column
        return {"column": column, "rows": 0, "sum": 0.0, "min": math.inf, "max": -math.inf}

    def update(self, state: dict, batch: wp.Batch) -> dict:
        s = batch.column(state["column"]).summarize()
        part = {"column": state["column"], "rows": s.count, "sum": s.sum, "min": s.min, "max": s.max}
        return merge_states(state, part)

    def merge(self, left: dict, right: dict) -> dict:
        return merge_states(left, right)

    def finalize(self, state: dict, pass_: int) -> wp.Done:
        if state["rows"] == 0:
            wp.fail(f"column {state['column']!r} has no values to summarize")
        summary = {
            "column": state["column"],
            "rows": state["rows"],
            "mean": state["sum"] / state["rows"],
            "min": state["min"],
            "max": state["max"],
        }
        wp.info(f"{summary['column']}: {summary['rows']} rows, mean {summary['mean']}")
        wp.report(summary, wp.metrics_table([("mean", None, summary["mean"]), ("rows", None, summary["rows"])]))
        return wp.Done(summary)


Fit = wp.export_aggregator(Stage)

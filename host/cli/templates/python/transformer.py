"""`{{name}}`, a wasmpipe transformer in Python: it clips a column into
`[lo, hi]`, one batch at a time, in parallel over the partitions of its
input.

```toml
[stage.{{name}}.config]
column = "x"
lo = 0.0
hi = 1.0
```

The clipping runs in the host (the `clamp` kernel): the values never enter
the interpreter. Replace it with what your stage does; `Column.to_list()`
and `Column.from_floats(...)` copy values in and out where no kernel fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import wasmpipe_sdk as wp


@dataclass
class Config:
    """The stage's configuration, `[stage.NAME.config]` in the manifest: an
    unknown or misspelt key, a missing one or a wrong type is an error that
    names it, before any data moves."""

    column: str
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self) -> None:
        if not self.lo <= self.hi:
            raise ValueError(f"lo ({self.lo}) must be a number not above hi ({self.hi})")


class Stage(wp.Transformer):
    def open(self, task: wp.Task) -> None:
        self.config = wp.config(Config)
        c = self.config
        wp.info(f"partition {task.partition}: clipping {c.column!r} into [{c.lo}, {c.hi}]")

    def transform(self, batch: wp.Batch) -> wp.Batch:
        c = self.config
        return batch.with_column(c.column, batch.column(c.column).clamp(c.lo, c.hi))


Transform = wp.export_transformer(Stage)

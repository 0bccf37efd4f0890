"""Text features (transformer, Python): the length in characters and the
number of tokens (split on whitespace, as Python's `str.split()`) of a text column, appended as
`<column>_chars` and `<column>_tokens` (int64; null where the text is).

```toml
[stage.text.config]
column = "review"
lowercase_tokens = false     # default; tell distinct tokens apart case-blind (casefold; with `distinct`)
distinct = false             # default; count distinct tokens instead of all
```

No kernel measures text, so each batch's strings are copied into the
interpreter (`to_list`) and the counts copied back out in bulk
(`Column.from_ints`).
"""

from __future__ import annotations

from dataclasses import dataclass

import wasmpipe_sdk as wp


@dataclass
class Config:
    column: str
    distinct: bool = False
    lowercase_tokens: bool = False


def counts(texts: list[str | None], distinct: bool, lowercase: bool) -> tuple[list[int], list[int], list[bool]]:
    """Characters and tokens of each text, and which are present."""
    chars, tokens, valid = [], [], []
    for text in texts:
        if text is None:
            chars.append(0)
            tokens.append(0)
            valid.append(False)
            continue
        words = text.split()
        if distinct:
            words = list({w.casefold() if lowercase else w for w in words})
        chars.append(len(text))
        tokens.append(len(words))
        valid.append(True)
    return chars, tokens, valid


class TextFeatures(wp.Transformer):
    def open(self, task: wp.Task) -> None:
        self.config = wp.config(Config)
        if self.config.lowercase_tokens and not self.config.distinct:
            raise wp.ConfigError("lowercase_tokens: only used with distinct = true")

    def transform(self, batch: wp.Batch) -> wp.Batch:
        name = self.config.column
        text = batch.column(name)
        if text.data_type != "utf8":
            wp.fail(f"column {name!r} is {text.data_type}, not text (utf8)")
        chars, tokens, valid = counts(text.to_list(), self.config.distinct, self.config.lowercase_tokens)
        out = batch.with_column(f"{name}_chars", wp.Column.from_ints(chars, valid))
        return out.with_column(f"{name}_tokens", wp.Column.from_ints(tokens, valid))


Transform = wp.export_transformer(TextFeatures)

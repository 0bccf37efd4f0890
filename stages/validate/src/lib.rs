//! Data-quality checks (estimator): rules over columns and over the whole
//! data set, each with a policy: `fail` the run, `warn` in the log, or
//! `quarantine` the rows that break it, so that they are set aside with the
//! reason instead of passed on. The fit checks every rule over all rows and
//! publishes a report; the transform passes on the rows that no
//! quarantine rule rejects, unchanged.
//!
//! ```toml
//! [stage.validate]
//! component = "../../stages/validate"
//! inputs = ["stage:ingest"]
//! config = { examples = 5, rules = [
//!   { column = "age", check = "not_null", policy = "quarantine" },
//!   { column = "age", check = "range", min = 0, max = 120, policy = "quarantine" },
//!   { column = "sex", check = "allowed", values = ["M", "F"], policy = "warn" },
//!   { column = "email", check = "regex", pattern = "^[^@]+@[^@]+$", policy = "quarantine" },
//!   { column = "id", check = "unique", policy = "fail" },
//!   { check = "row_count", min = 100, max = 1000000, policy = "fail" },
//!   { column = "bmi", check = "max_null_fraction", max = 0.05, policy = "warn" },
//! ] }
//! ```
//!
//! `examples` (default 5, at most 1,000) is how many failing values each
//! rule keeps for the report and messages. Each rule has a `check`, a
//! `column` (every check but `row_count`), the keys its check takes, a
//! `policy` (default `fail`) and an optional `name`. The default name says
//! what the rule checks: `age: range [0, 120]`, `age: range >= 0`,
//! `sex: allowed [M, F]`, `email: regex ^[^@]+@[^@]+$`, `id: unique`,
//! `row_count [100, 1000000]`, `bmi: max_null_fraction 0.05`. Names must be
//! unique (give two rules that would share one a `name`). A key that the
//! rule's check does not take, a missing bound, an invalid `pattern`
//! (`regex` crate syntax) or a policy the check cannot have is a config
//! error naming the rule.
//!
//! # Checks
//!
//! Row checks judge each row on its own; a null passes every one but
//! `not_null`:
//! * `not_null`: the value is not null (any column type; NaN is not null).
//! * `range`: `min <= value <= max` (inclusive; either bound may be left
//!   out) on an int32, int64, float32 or float64 column; NaN fails. Values
//!   are compared as f64 (exact for integers up to 2^53).
//! * `allowed`: the value is one of `values`: strings for a utf8 column
//!   (compared exactly), numbers for a numeric column (compared
//!   numerically, as f64; NaN is never allowed). One list holds one kind.
//! * `regex`: `pattern` matches the utf8 value (`Regex::is_match`, which
//!   finds a match anywhere: anchor the pattern with `^...$` to match whole
//!   values).
//!
//! Data-set checks judge all rows together:
//! * `unique`: no non-null value of the column (int32, int64, float32,
//!   float64 or utf8; floats compared by value, -0 = 0, NaNs equal) occurs
//!   twice. Its failing rows are all the rows whose value occurs more than
//!   once, first occurrences included; under `quarantine` all of them are
//!   set aside.
//! * `row_count`: `min <= rows <= max` (either bound may be left out).
//!   It fails no row in particular: its `rows_failed` is 0 and its verdict
//!   is `passed`.
//! * `max_null_fraction`: at most `max` (0 to 1) of the rows are null in
//!   the column; `rows_failed` counts the nulls. No examples: they would
//!   all read `null`.
//!
//! A rule on a missing column, or a check on a column of a type it does
//! not take, fails the task with a message naming the rule and the column.
//!
//! # Policies
//!
//! After the fit the stage logs one line per failed rule, of the form
//! `rule "id: unique": 3 of 442 rows failed (examples: 17, 17, 230)`:
//! * `fail`: the run fails, its error naming every failed `fail` rule
//!   (`validation failed: rule ...; rule ...`);
//! * `warn`: a warning in the log (`validation warning: rule ...`); the
//!   rows pass on;
//! * `quarantine` (row checks and `unique` only): the transform sets the
//!   failing rows aside (`wasmpipe_sdk::quarantine`, written by the host to
//!   `_quarantine/` beside the output) with one reason per row, the names of
//!   every quarantine rule it breaks with its value, joined by `; `:
//!   `age: range [0, 120] (got 150); email: regex ^[^@]+@[^@]+$ (got x@)`.
//!   The other rows pass on unchanged (same columns, same order).
//!
//! # Report
//!
//! Published from the fit (`wasmpipe_sdk::report`, written by the host as
//! `_report-HASH.json` and `.parquet`) before a `fail` rule fails the run:
//! `{"rows", "passed", "rules": [{"name", "column", "check", "policy",
//! "rows_checked", "rows_failed", "passed", "examples"}]}`. `rows_checked`
//! is the number of rows for every rule; `passed` at the top is true when
//! every rule passed, whatever its policy. `examples` are failing values as
//! text (`"150"`, `"null"`, `"x@"`): the first ones in data order, i.e.
//! those with the smallest (partition, row within the partition), so the
//! report does not depend on how the input is partitioned. The table has
//! one row per rule: `rule`, `column` (null for `row_count`), `check`,
//! `policy` (utf8), `rows_checked`, `rows_failed` (int64), `passed` (bool),
//! `examples` (utf8, the JSON array).
//!
//! # Fit, merging and memory
//!
//! One pass: each partition counts every rule's failing rows and keeps its
//! first `examples` failing values with their positions; states merge by
//! adding the counts and keeping the `examples` smallest positions, which is
//! associative and exact. `unique` keeps the 64-bit xxh3 hash of every
//! non-null key (seeded by the key's type): **8 bytes per row** in the
//! guest, 16 in the JSON state (hex) that crosses the host, merged by
//! concatenation. Finalize sorts them and finds the repeated ones. A
//! million rows take 8 MB in the instance that merges (the default memory
//! cap is 256 MiB). Distinct keys collide with probability about
//! n^2 / 2^65 (3e-8 for a million rows), which would report a repeat that
//! is not one. Only when a `unique` rule found repeated keys (and
//! `examples > 0`) does the fit take a second pass, reading just those key
//! columns, to find the values and first positions of the repeated rows for
//! the examples; the first pass's counts travel in the carry.
//!
//! # Where it runs
//!
//! The checked columns are copied into the guest (`read_f64`, `read_i64`
//! with `validity`, `read_utf8`; only the null mask for `not_null`, only
//! the null count for `max_null_fraction`), once per column and batch: the
//! checks are per-row loops that also need the failing values as text, and
//! strings and regular expressions have no kernels. The transform filters
//! rows with `filter` and quarantines with the host's `quarantine`.
//!
//! # Model
//!
//! JSON: `rules` (the quarantine rules, resolved: `name`, `column`,
//! `check` with its keys, `policy`) and `repeated` (per quarantine `unique`
//! rule with repeated keys, the sorted repeated hashes, as hex). A model
//! applied to other data (`model = "stage:..."`) quarantines those rows by
//! the same row checks, and by `unique` those whose key was repeated in
//! the fitted data.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::rc::Rc;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use wasmpipe_sdk::{Batch, Column, DataType, Error, Estimator, Field, Outcome, Predictor, Result, Schema, Task};

/// The most examples a rule may keep: every partition's state carries up
/// to this many per rule, and the report and messages list them.
const MAX_EXAMPLES: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_examples")]
    examples: usize,
    rules: Vec<RuleConfig>,
}

fn default_examples() -> usize {
    5
}

/// What happens when a rule fails.
#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
enum Policy {
    #[default]
    Fail,
    Warn,
    Quarantine,
}

/// The `check` key of a rule in the config.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum CheckName {
    NotNull,
    Range,
    Allowed,
    Regex,
    Unique,
    RowCount,
    MaxNullFraction,
}

/// One of an `allowed` rule's `values`.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
enum Literal {
    Str(String),
    Num(f64),
}

/// A rule as written in the config; [`resolve`] checks it into a [`Rule`].
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    name: Option<String>,
    column: Option<String>,
    check: CheckName,
    min: Option<f64>,
    max: Option<f64>,
    values: Option<Vec<Literal>>,
    pattern: Option<String>,
    #[serde(default)]
    policy: Policy,
}

/// A checked rule, with its name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Rule {
    name: String,
    column: Option<String>,
    #[serde(flatten)]
    check: Check,
    policy: Policy,
}

/// A checked rule's check and its parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "check", rename_all = "snake_case")]
enum Check {
    NotNull,
    Range { min: Option<f64>, max: Option<f64> },
    Allowed { values: Allowed },
    Regex { pattern: String },
    Unique,
    RowCount { min: Option<u64>, max: Option<u64> },
    MaxNullFraction { max: f64 },
}

/// An `allowed` rule's values, all of one kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Allowed {
    Str(Vec<String>),
    Num(Vec<f64>),
}

impl Check {
    fn name(&self) -> &'static str {
        match self {
            Check::NotNull => "not_null",
            Check::Range { .. } => "range",
            Check::Allowed { .. } => "allowed",
            Check::Regex { .. } => "regex",
            Check::Unique => "unique",
            Check::RowCount { .. } => "row_count",
            Check::MaxNullFraction { .. } => "max_null_fraction",
        }
    }
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Fail => "fail",
        Policy::Warn => "warn",
        Policy::Quarantine => "quarantine",
    }
}

/// `[a, b]`, `>= a` or `<= b`.
fn bounds<T: std::fmt::Display>(min: Option<T>, max: Option<T>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("[{a}, {b}]"),
        (Some(a), None) => format!(">= {a}"),
        (None, Some(b)) => format!("<= {b}"),
        (None, None) => String::new(),
    }
}

/// The name of a rule that the config does not name.
fn default_name(column: Option<&str>, check: &Check) -> String {
    let what = match check {
        Check::NotNull | Check::Unique => check.name().to_string(),
        Check::Range { min, max } => format!("range {}", bounds(*min, *max)),
        Check::Allowed { values: Allowed::Str(v) } => format!("allowed [{}]", v.join(", ")),
        Check::Allowed { values: Allowed::Num(v) } => {
            format!("allowed [{}]", v.iter().map(f64::to_string).collect::<Vec<_>>().join(", "))
        }
        Check::Regex { pattern } => format!("regex {pattern}"),
        Check::RowCount { min, max } => format!("row_count {}", bounds(*min, *max)),
        Check::MaxNullFraction { max } => format!("max_null_fraction {max}"),
    };
    match column {
        Some(c) => format!("{c}: {what}"),
        None => what,
    }
}

/// A row-count bound: a whole number of rows.
fn count_bound(key: &str, v: Option<f64>) -> std::result::Result<Option<u64>, String> {
    match v {
        Some(x) if !(x >= 0.0 && x.fract() == 0.0 && x < 2f64.powi(64)) => {
            Err(format!("{key} = {x} is not a whole number of rows"))
        }
        Some(x) => Ok(Some(x as u64)),
        None => Ok(None),
    }
}

/// Check one rule of the config; errors say what is wrong with it.
fn resolve_rule(r: &RuleConfig) -> std::result::Result<Rule, String> {
    let check = r.check;
    let keys = [("min", r.min.is_some()), ("max", r.max.is_some()), ("values", r.values.is_some())];
    let keys = keys.into_iter().chain([("pattern", r.pattern.is_some())]);
    let takes: &[&str] = match check {
        CheckName::NotNull | CheckName::Unique => &[],
        CheckName::Range | CheckName::RowCount => &["min", "max"],
        CheckName::Allowed => &["values"],
        CheckName::Regex => &["pattern"],
        CheckName::MaxNullFraction => &["max"],
    };
    if let Some((key, _)) = keys.filter(|(_, given)| *given).find(|(key, _)| !takes.contains(key)) {
        return Err(format!("`{key}` does not apply to this check"));
    }
    let column = match (check, &r.column) {
        (CheckName::RowCount, Some(_)) => return Err("row_count counts the rows and takes no `column`".into()),
        (CheckName::RowCount, None) => None,
        (_, None) => return Err("the check needs a `column`".into()),
        (_, Some(c)) => Some(c.clone()),
    };
    let check = match check {
        CheckName::NotNull => Check::NotNull,
        CheckName::Unique => Check::Unique,
        CheckName::Range => {
            if r.min.is_none() && r.max.is_none() {
                return Err("range needs `min`, `max` or both".into());
            }
            if r.min.is_some_and(f64::is_nan) || r.max.is_some_and(f64::is_nan) {
                return Err("a range bound is NaN".into());
            }
            if let (Some(a), Some(b)) = (r.min, r.max)
                && a > b
            {
                return Err(format!("min = {a} is above max = {b}"));
            }
            Check::Range { min: r.min, max: r.max }
        }
        CheckName::Allowed => {
            let values = r.values.as_deref().unwrap_or_default();
            if values.is_empty() {
                return Err("allowed needs a non-empty `values` list".into());
            }
            let strings: Vec<String> =
                values.iter().filter_map(|v| if let Literal::Str(s) = v { Some(s.clone()) } else { None }).collect();
            let numbers: Vec<f64> =
                values.iter().filter_map(|v| if let Literal::Num(x) = v { Some(*x) } else { None }).collect();
            match (strings.is_empty(), numbers.is_empty()) {
                (false, true) => Check::Allowed { values: Allowed::Str(strings) },
                (true, false) => Check::Allowed { values: Allowed::Num(numbers) },
                _ => return Err("`values` mixes strings and numbers; give one kind, as the column's type".into()),
            }
        }
        CheckName::Regex => {
            let Some(pattern) = &r.pattern else { return Err("regex needs a `pattern`".into()) };
            Regex::new(pattern).map_err(|e| format!("invalid pattern: {e}"))?;
            Check::Regex { pattern: pattern.clone() }
        }
        CheckName::RowCount => {
            let (min, max) = (count_bound("min", r.min)?, count_bound("max", r.max)?);
            match (min, max) {
                (None, None) => return Err("row_count needs `min`, `max` or both".into()),
                (Some(a), Some(b)) if a > b => return Err(format!("min = {a} is above max = {b}")),
                _ => Check::RowCount { min, max },
            }
        }
        CheckName::MaxNullFraction => match r.max {
            Some(m) if (0.0..=1.0).contains(&m) => Check::MaxNullFraction { max: m },
            Some(m) => return Err(format!("max = {m} is not a fraction in [0, 1]")),
            None => return Err("max_null_fraction needs `max`".into()),
        },
    };
    if r.policy == Policy::Quarantine && matches!(check, Check::RowCount { .. } | Check::MaxNullFraction { .. }) {
        return Err(format!(
            "policy \"quarantine\" does not apply to {}, which judges the whole data set and no row in particular; use \"fail\" or \"warn\"",
            check.name()
        ));
    }
    let name = match &r.name {
        Some(n) if n.trim().is_empty() => return Err("`name` is empty".into()),
        Some(n) => n.clone(),
        None => default_name(column.as_deref(), &check),
    };
    Ok(Rule { name, column, check, policy: r.policy })
}

/// Check the config's rules; the error names the rule at fault.
fn resolve(config: &Config) -> std::result::Result<Vec<Rule>, String> {
    if config.rules.is_empty() {
        return Err("rules: give at least one rule".into());
    }
    if config.examples > MAX_EXAMPLES {
        return Err(format!("examples: at most {MAX_EXAMPLES}, not {}", config.examples));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(config.rules.len());
    for (i, r) in config.rules.iter().enumerate() {
        let rule = resolve_rule(r).map_err(|e| match &r.name {
            Some(n) => format!("rule {n:?}: {e}"),
            None => format!("rules[{i}] ({:?} check): {e}", r.check),
        })?;
        if rules.iter().any(|x| x.name == rule.name) {
            return Err(format!("two rules are named {:?}; give one of them another `name`", rule.name));
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// A test of each row of one column.
#[derive(Debug)]
enum RowTest {
    NotNull,
    Range {
        min: f64,
        max: f64,
    },
    AllowedStr(HashSet<String>),
    AllowedNum(Vec<f64>),
    Matches(Regex),
    /// The key's hash is one of these (sorted).
    Repeated(Vec<u64>),
}

impl RowTest {
    /// The row test of a row check; `None` for the data-set checks.
    fn of(check: &Check) -> std::result::Result<Option<RowTest>, String> {
        Ok(Some(match check {
            Check::NotNull => RowTest::NotNull,
            Check::Range { min, max } => {
                RowTest::Range { min: min.unwrap_or(f64::NEG_INFINITY), max: max.unwrap_or(f64::INFINITY) }
            }
            Check::Allowed { values: Allowed::Str(v) } => RowTest::AllowedStr(v.iter().cloned().collect()),
            Check::Allowed { values: Allowed::Num(v) } => RowTest::AllowedNum(v.clone()),
            Check::Regex { pattern } => RowTest::Matches(Regex::new(pattern).map_err(|e| e.to_string())?),
            Check::Unique | Check::RowCount { .. } | Check::MaxNullFraction { .. } => return Ok(None),
        }))
    }

    /// Whether the test reads values, not just the null mask.
    fn reads_values(&self) -> bool {
        !matches!(self, RowTest::NotNull)
    }

    /// The column types the test takes, for messages.
    fn needs(&self) -> &'static str {
        match self {
            RowTest::NotNull => "any column",
            RowTest::Range { .. } | RowTest::AllowedNum(_) => "a numeric column (int32, int64, float32 or float64)",
            RowTest::AllowedStr(_) | RowTest::Matches(_) => "a utf8 column",
            RowTest::Repeated(_) => KEY_TYPES,
        }
    }
}

const KEY_TYPES: &str = "an int32, int64, float32, float64 or utf8 column";

/// One column's rows as copied into the guest; `None` is null.
#[derive(Debug, Clone, PartialEq)]
enum Cells {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Str(Vec<Option<String>>),
    /// Only which rows are null: for `not_null`, or a type no check reads.
    Nulls(Vec<bool>),
}

impl Cells {
    fn len(&self) -> usize {
        match self {
            Cells::Int(v) => v.len(),
            Cells::Float(v) => v.len(),
            Cells::Str(v) => v.len(),
            Cells::Nulls(v) => v.len(),
        }
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Cells::Int(v) => v[i].is_none(),
            Cells::Float(v) => v[i].is_none(),
            Cells::Str(v) => v[i].is_none(),
            Cells::Nulls(v) => v[i],
        }
    }

    /// Row `i` as text for examples and reasons: `150`, `32.1`, `NaN`,
    /// `x@`, `null`.
    fn text(&self, i: usize) -> String {
        match self {
            Cells::Int(v) => v[i].map_or("null".into(), |x| x.to_string()),
            Cells::Float(v) => v[i].map_or("null".into(), |x| x.to_string()),
            Cells::Str(v) => v[i].clone().unwrap_or_else(|| "null".into()),
            Cells::Nulls(v) => if v[i] { "null" } else { "(not null)" }.into(),
        }
    }
}

/// The hash of every row's key (`None` for null), or `None` for a column
/// type that cannot be a key. Seeded by type, so that the encodings of
/// different types cannot meet.
fn key_hashes(cells: &Cells) -> Option<Vec<Option<u64>>> {
    use xxhash_rust::xxh3::xxh3_64_with_seed as xxh3;
    Some(match cells {
        Cells::Int(v) => v.iter().map(|x| x.map(|x| xxh3(&x.to_le_bytes(), 1))).collect(),
        Cells::Float(v) => v
            .iter()
            .map(|x| {
                x.map(|x| {
                    // Equal values hash equally: -0 as 0, every NaN as one.
                    let x = if x == 0.0 {
                        0.0
                    } else if x.is_nan() {
                        f64::NAN
                    } else {
                        x
                    };
                    xxh3(&x.to_bits().to_le_bytes(), 2)
                })
            })
            .collect(),
        Cells::Str(v) => v.iter().map(|x| x.as_ref().map(|s| xxh3(s.as_bytes(), 3))).collect(),
        Cells::Nulls(_) => return None,
    })
}

/// The rows of `cells` that fail `test`, with their values as text, in
/// row order; `None` when the test does not take the column's type.
fn row_failures(test: &RowTest, cells: &Cells) -> Option<Vec<(usize, String)>> {
    let failing = |fails: &dyn Fn(usize) -> bool| -> Vec<(usize, String)> {
        (0..cells.len()).filter(|&i| fails(i)).map(|i| (i, cells.text(i))).collect()
    };
    let outside = |x: f64, min: f64, max: f64| x.is_nan() || x < min || x > max;
    Some(match (test, cells) {
        (RowTest::NotNull, c) => failing(&|i| c.is_null(i)),
        (RowTest::Range { min, max }, Cells::Int(v)) => {
            failing(&|i| v[i].is_some_and(|x| outside(x as f64, *min, *max)))
        }
        (RowTest::Range { min, max }, Cells::Float(v)) => failing(&|i| v[i].is_some_and(|x| outside(x, *min, *max))),
        (RowTest::AllowedNum(a), Cells::Int(v)) => failing(&|i| v[i].is_some_and(|x| !a.contains(&(x as f64)))),
        (RowTest::AllowedNum(a), Cells::Float(v)) => failing(&|i| v[i].is_some_and(|x| !a.contains(&x))),
        (RowTest::AllowedStr(a), Cells::Str(v)) => failing(&|i| v[i].as_ref().is_some_and(|x| !a.contains(x))),
        (RowTest::Matches(re), Cells::Str(v)) => failing(&|i| v[i].as_ref().is_some_and(|x| !re.is_match(x))),
        (RowTest::Repeated(repeated), c) => return repeated_rows(repeated, c),
        _ => return None,
    })
}

/// The rows of `cells` whose key's hash is one of `repeated` (sorted), with
/// their keys as text; `None` for a column type that cannot be a key.
fn repeated_rows(repeated: &[u64], cells: &Cells) -> Option<Vec<(usize, String)>> {
    let keys = key_hashes(cells)?;
    let hit = |i: &usize| keys[*i].is_some_and(|k| repeated.binary_search(&k).is_ok());
    Some((0..cells.len()).filter(hit).map(|i| (i, cells.text(i))).collect())
}

/// Copy a column into the guest: only its null mask unless `values`.
fn read_cells(column: &Column, values: bool) -> Result<Cells> {
    if !values {
        return Ok(Cells::Nulls(column.null_mask()));
    }
    let valid = column.validity();
    let ok = |i: usize| valid.as_ref().is_none_or(|v| v[i]);
    Ok(match column.data_type() {
        DataType::Int32 | DataType::Int64 => {
            Cells::Int(column.read_i64()?.into_iter().enumerate().map(|(i, x)| ok(i).then_some(x)).collect())
        }
        DataType::Float32 | DataType::Float64 => {
            Cells::Float(column.read_f64()?.into_iter().enumerate().map(|(i, x)| ok(i).then_some(x)).collect())
        }
        DataType::Utf8 => Cells::Str(column.read_utf8()?),
        _ => Cells::Nulls(column.null_mask()),
    })
}

fn type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "boolean".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Utf8 => "utf8".into(),
        DataType::Timestamp(_) => "timestamp".into(),
        DataType::Other(name) => name.clone(),
    }
}

fn wrong_type(rule: &Rule, column_type: &str, needs: &str) -> Error {
    Error::TypeMismatch(format!(
        "rule {:?}: column {:?} is {column_type}, and {} needs {needs}",
        rule.name,
        rule.column.as_deref().unwrap_or_default(),
        rule.check.name()
    ))
}

/// The columns of one batch, each copied at most once per use.
struct Reader<'a> {
    batch: &'a Batch,
    cells: HashMap<(String, bool), (Rc<Cells>, String)>,
}

impl<'a> Reader<'a> {
    fn new(batch: &'a Batch) -> Self {
        Reader { batch, cells: HashMap::new() }
    }

    /// The rule's column; a missing one is an error naming the rule.
    fn column(&self, rule: &Rule) -> Result<Column> {
        let name = rule.column.as_deref().unwrap_or_default();
        self.batch.column(name).map_err(|_| {
            Error::ColumnNotFound(format!(
                "rule {:?}: no column {name:?} in the input (its columns: {})",
                rule.name,
                self.batch.column_names().join(", ")
            ))
        })
    }

    /// The rule's column as cells, and its type's name.
    fn cells(&mut self, rule: &Rule, values: bool) -> Result<(Rc<Cells>, String)> {
        let key = (rule.column.clone().unwrap_or_default(), values);
        if let Some(hit) = self.cells.get(&key) {
            return Ok(hit.clone());
        }
        let column = self.column(rule)?;
        let read = (Rc::new(read_cells(&column, values)?), type_name(&column.data_type()));
        self.cells.insert(key, read.clone());
        Ok(read)
    }

    /// The rows of the rule's column failing `test`.
    fn failures(&mut self, rule: &Rule, test: &RowTest) -> Result<Vec<(usize, String)>> {
        let (cells, column_type) = self.cells(rule, test.reads_values())?;
        row_failures(test, &cells).ok_or_else(|| wrong_type(rule, &column_type, test.needs()))
    }
}

/// The checked config, compiled once per instance.
struct Plan {
    examples: usize,
    rules: Vec<Rule>,
    /// Per rule, its row test (`None` for the data-set checks).
    tests: Vec<Option<RowTest>>,
}

impl Plan {
    fn new(config: &Config) -> std::result::Result<Plan, String> {
        let rules = resolve(config)?;
        let tests = rules
            .iter()
            .map(|r| RowTest::of(&r.check).map_err(|e| format!("rule {:?}: {e}", r.name)))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Plan { examples: config.examples, rules, tests })
    }
}

thread_local! {
    /// The plan of this instance's config (one config per instance).
    static PLAN: RefCell<Option<Rc<Plan>>> = const { RefCell::new(None) };
}

fn plan() -> Result<Rc<Plan>> {
    if let Some(p) = PLAN.with_borrow(|p| p.clone()) {
        return Ok(p);
    }
    let config: Config = wasmpipe_sdk::config()?;
    let plan = Rc::new(Plan::new(&config).map_err(Error::InvalidConfig)?);
    PLAN.set(Some(plan.clone()));
    Ok(plan)
}

/// 64-bit hashes, encoded in JSON as one hex string (16 digits each)
/// rather than a list of numbers (up to 21 bytes each).
#[derive(Clone, Debug, PartialEq, Default)]
struct Hashes(Vec<u64>);

impl Hashes {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Hashes {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut hex = String::with_capacity(16 * self.0.len());
        for h in &self.0 {
            write!(hex, "{h:016x}").expect("writing to a String");
        }
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for Hashes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let hex = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("hashes: not a string of 16-digit hex numbers");
        if hex.len() % 16 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        hex.as_bytes()
            .chunks(16)
            .map(|c| std::str::from_utf8(c).ok().and_then(|s| u64::from_str_radix(s, 16).ok()))
            .collect::<Option<Vec<u64>>>()
            .map(Hashes)
            .ok_or_else(bad)
    }
}

/// A failing value at (partition, row within the partition).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Example(u32, u64, String);

/// The `k` examples with the smallest positions of both lists.
fn merge_examples(mut a: Vec<Example>, b: Vec<Example>, k: usize) -> Vec<Example> {
    a.extend(b);
    a.sort();
    a.truncate(k);
    a
}

/// Append the failures at rows `offset + i` of `partition` to `examples`,
/// up to `k` in all.
fn add_examples(examples: &mut Vec<Example>, failures: Vec<(usize, String)>, partition: u32, offset: u64, k: usize) {
    let room = k.saturating_sub(examples.len());
    examples.extend(failures.into_iter().take(room).map(|(i, v)| Example(partition, offset + i as u64, v)));
}

/// One rule's counts so far.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
struct Tally {
    failed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    examples: Vec<Example>,
    /// `unique`: the hash of every non-null key seen.
    #[serde(default, skip_serializing_if = "Hashes::is_empty")]
    hashes: Hashes,
}

impl Tally {
    fn merge(self, other: Tally, k: usize) -> Tally {
        let mut hashes = self.hashes.0;
        hashes.extend(other.hashes.0);
        Tally {
            failed: self.failed + other.failed,
            examples: merge_examples(self.examples, other.examples, k),
            hashes: Hashes(hashes),
        }
    }
}

/// The checked data set: the first pass's result, and the second pass's
/// carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Summary {
    rows: u64,
    /// Per rule (no hashes left).
    tallies: Vec<Tally>,
    /// Per rule: for `unique`, the sorted hashes of the repeated keys.
    repeated: Vec<Hashes>,
}

/// The sorted distinct hashes occurring more than once, and the number of
/// rows holding them.
fn repeats(mut hashes: Vec<u64>) -> (Vec<u64>, u64) {
    hashes.sort_unstable();
    let mut repeated = Vec::new();
    let mut rows = 0;
    for run in hashes.chunk_by(|a, b| a == b).filter(|run| run.len() > 1) {
        repeated.push(run[0]);
        rows += run.len() as u64;
    }
    (repeated, rows)
}

/// The first pass's merged tallies as a summary: `unique` rules counted.
fn summarize(rules: &[Rule], rows: u64, mut tallies: Vec<Tally>) -> Summary {
    let mut repeated = Vec::with_capacity(rules.len());
    for (rule, t) in rules.iter().zip(&mut tallies) {
        let hashes = std::mem::take(&mut t.hashes);
        if rule.check == Check::Unique {
            let (r, failed) = repeats(hashes.0);
            t.failed = failed;
            repeated.push(Hashes(r));
        } else {
            repeated.push(Hashes::default());
        }
    }
    Summary { rows, tallies, repeated }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
enum State {
    /// The pass that checks every rule.
    Check { partition: u32, rows: u64, tallies: Vec<Tally> },
    /// The second pass, only when a `unique` rule found repeated keys: the
    /// first examples of the rows holding them, per rule.
    Repeats { partition: u32, rows: u64, examples: Vec<Vec<Example>>, summary: Summary },
}

fn merge_states(left: State, right: State, k: usize) -> std::result::Result<State, String> {
    Ok(match (left, right) {
        (State::Check { partition, rows, tallies }, State::Check { partition: p, rows: r, tallies: t }) => {
            if tallies.len() != t.len() {
                return Err("states of different rule lists".into());
            }
            let tallies = tallies.into_iter().zip(t).map(|(a, b)| a.merge(b, k)).collect();
            State::Check { partition: partition.min(p), rows: rows + r, tallies }
        }
        (
            State::Repeats { partition, rows, examples, summary },
            State::Repeats { partition: p, rows: r, examples: e, .. },
        ) => {
            let examples = examples.into_iter().zip(e).map(|(a, b)| merge_examples(a, b, k)).collect();
            State::Repeats { partition: partition.min(p), rows: rows + r, examples, summary }
        }
        _ => return Err("cannot merge states of different passes".into()),
    })
}

/// One rule's line of the report.
#[derive(Serialize, Clone, Debug, PartialEq)]
struct Verdict {
    name: String,
    column: Option<String>,
    check: &'static str,
    policy: Policy,
    rows_checked: u64,
    rows_failed: u64,
    passed: bool,
    examples: Vec<String>,
}

#[derive(Serialize, Debug)]
struct Report<'a> {
    rows: u64,
    passed: bool,
    rules: &'a [Verdict],
}

fn verdicts(rules: &[Rule], summary: &Summary) -> Vec<Verdict> {
    let rows = summary.rows;
    rules
        .iter()
        .zip(&summary.tallies)
        .map(|(rule, t)| {
            let passed = match &rule.check {
                Check::RowCount { min, max } => min.is_none_or(|m| rows >= m) && max.is_none_or(|m| rows <= m),
                Check::MaxNullFraction { max } => rows == 0 || t.failed as f64 / rows as f64 <= *max,
                _ => t.failed == 0,
            };
            Verdict {
                name: rule.name.clone(),
                column: rule.column.clone(),
                check: rule.check.name(),
                policy: rule.policy,
                rows_checked: rows,
                rows_failed: t.failed,
                passed,
                examples: t.examples.iter().map(|e| e.2.clone()).collect(),
            }
        })
        .collect()
}

/// What a failed rule's log line or error says.
fn message(rule: &Rule, v: &Verdict) -> String {
    let (name, rows, failed) = (&v.name, v.rows_checked, v.rows_failed);
    match &rule.check {
        Check::RowCount { min, max } => {
            let expected = match (min, max) {
                (Some(a), Some(b)) => format!("{a} to {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => "any number".into(),
            };
            format!("rule {name:?}: {rows} rows, expected {expected}")
        }
        Check::MaxNullFraction { max } => {
            let fraction = failed as f64 / rows.max(1) as f64;
            format!("rule {name:?}: {failed} of {rows} rows are null, a fraction of {fraction:.4} (at most {max})")
        }
        _ if v.examples.is_empty() => format!("rule {name:?}: {failed} of {rows} rows failed"),
        _ => format!("rule {name:?}: {failed} of {rows} rows failed (examples: {})", v.examples.join(", ")),
    }
}

/// The report as a table, one row per rule.
fn table(verdicts: &[Verdict]) -> Result<Batch> {
    let utf8 = |f: &dyn Fn(&Verdict) -> Option<String>| Column::from_utf8(&verdicts.iter().map(f).collect::<Vec<_>>());
    let int =
        |f: &dyn Fn(&Verdict) -> u64| Column::from_i64(&verdicts.iter().map(|v| f(v) as i64).collect::<Vec<_>>(), None);
    let columns = [
        ("rule", utf8(&|v| Some(v.name.clone()))?),
        ("column", utf8(&|v| v.column.clone())?),
        ("check", utf8(&|v| Some(v.check.to_string()))?),
        ("policy", utf8(&|v| Some(policy_name(v.policy).to_string()))?),
        ("rows_checked", int(&|v| v.rows_checked)?),
        ("rows_failed", int(&|v| v.rows_failed)?),
        ("passed", Column::from_bool(&verdicts.iter().map(|v| v.passed).collect::<Vec<_>>(), None)?),
        ("examples", utf8(&|v| serde_json::to_string(&v.examples).ok())?),
    ];
    let named: Vec<(String, &Column)> = columns.iter().map(|(n, c)| (n.to_string(), c)).collect();
    Batch::from_columns(&named)
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Model {
    /// The quarantine rules: what the transform checks.
    rules: Vec<Rule>,
    /// Per quarantine `unique` rule with repeated keys, their sorted hashes.
    #[serde(default)]
    repeated: BTreeMap<String, Hashes>,
}

fn model(rules: &[Rule], summary: &Summary) -> Model {
    let mut model = Model { rules: Vec::new(), repeated: BTreeMap::new() };
    for (rule, repeated) in rules.iter().zip(&summary.repeated) {
        if rule.policy == Policy::Quarantine {
            model.rules.push(rule.clone());
            if !repeated.is_empty() {
                model.repeated.insert(rule.name.clone(), repeated.clone());
            }
        }
    }
    model
}

/// Publish the report, log the failed rules, and fail the run if a
/// `fail` rule failed.
fn finish(plan: &Plan, summary: Summary) -> Result<Outcome<Model, Summary>> {
    let verdicts = verdicts(&plan.rules, &summary);
    let passed = verdicts.iter().filter(|v| v.passed).count();
    let report = Report { rows: summary.rows, passed: passed == verdicts.len(), rules: &verdicts };
    wasmpipe_sdk::report(&report, Some(&table(&verdicts)?))?;
    wasmpipe_sdk::info!("validated {} rows: {passed} of {} rules passed", summary.rows, verdicts.len());
    let mut failures = Vec::new();
    for (rule, v) in plan.rules.iter().zip(&verdicts).filter(|(_, v)| !v.passed) {
        let m = message(rule, v);
        match rule.policy {
            Policy::Fail => failures.push(m),
            Policy::Warn => wasmpipe_sdk::warn!("validation warning: {m}"),
            Policy::Quarantine => wasmpipe_sdk::info!("quarantining: {m}"),
        }
    }
    if !failures.is_empty() {
        wasmpipe_sdk::fail!("validation failed: {}", failures.join("; "));
    }
    Ok(Outcome::Done(model(&plan.rules, &summary)))
}

struct Validate;

impl Estimator for Validate {
    type State = State;
    type Carry = Summary;
    type Model = Model;

    fn begin(task: &Task, carry: Option<Summary>) -> Result<State> {
        let plan = plan()?;
        let n = plan.rules.len();
        Ok(match carry {
            None => State::Check { partition: task.partition, rows: 0, tallies: vec![Tally::default(); n] },
            Some(summary) => {
                State::Repeats { partition: task.partition, rows: 0, examples: vec![Vec::new(); n], summary }
            }
        })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let plan = plan()?;
        let k = plan.examples;
        let mut reader = Reader::new(batch);
        match state {
            State::Check { partition, rows, tallies } => {
                for ((rule, test), tally) in plan.rules.iter().zip(&plan.tests).zip(tallies.iter_mut()) {
                    match (test, &rule.check) {
                        (Some(test), _) => {
                            let failures = reader.failures(rule, test)?;
                            tally.failed += failures.len() as u64;
                            add_examples(&mut tally.examples, failures, *partition, *rows, k);
                        }
                        (None, Check::Unique) => {
                            let (cells, column_type) = reader.cells(rule, true)?;
                            let keys = key_hashes(&cells).ok_or_else(|| wrong_type(rule, &column_type, KEY_TYPES))?;
                            tally.hashes.0.extend(keys.into_iter().flatten());
                        }
                        (None, Check::MaxNullFraction { .. }) => tally.failed += reader.column(rule)?.null_count(),
                        (None, _) => {}
                    }
                }
                *rows += batch.num_rows();
            }
            State::Repeats { partition, rows, examples, summary } => {
                for ((rule, repeated), examples) in plan.rules.iter().zip(&summary.repeated).zip(examples.iter_mut()) {
                    if repeated.is_empty() || examples.len() >= k {
                        continue;
                    }
                    let (cells, column_type) = reader.cells(rule, true)?;
                    let failures =
                        repeated_rows(&repeated.0, &cells).ok_or_else(|| wrong_type(rule, &column_type, KEY_TYPES))?;
                    add_examples(examples, failures, *partition, *rows, k);
                }
                *rows += batch.num_rows();
            }
        }
        Ok(())
    }

    fn merge(left: State, right: State) -> Result<State> {
        merge_states(left, right, plan()?.examples).map_err(Error::StageFailed)
    }

    fn finalize(state: State, _pass: u32) -> Result<Outcome<Model, Summary>> {
        let plan = plan()?;
        let summary = match state {
            State::Check { rows, tallies, .. } => {
                let summary = summarize(&plan.rules, rows, tallies);
                if plan.examples > 0 && summary.repeated.iter().any(|r| !r.is_empty()) {
                    wasmpipe_sdk::debug!("repeated keys found; another pass finds their first rows");
                    return Ok(Outcome::NextPass(summary));
                }
                summary
            }
            State::Repeats { examples, mut summary, .. } => {
                for ((t, e), r) in summary.tallies.iter_mut().zip(examples).zip(&summary.repeated) {
                    if !r.is_empty() {
                        t.examples = e;
                    }
                }
                summary
            }
        };
        finish(&plan, summary)
    }
}

/// The transform: sets aside the rows that a quarantine rule rejects.
struct Apply {
    tests: Vec<(Rule, RowTest)>,
}

/// Per row, the reasons it is quarantined (empty: it passes), joined by
/// `; `, from each rule's failures in rule order.
fn reasons(rows: usize, failures: &[(&str, Vec<(usize, String)>)]) -> Vec<String> {
    let mut reasons = vec![String::new(); rows];
    for (name, failing) in failures {
        for (i, value) in failing {
            let r = &mut reasons[*i];
            if !r.is_empty() {
                r.push_str("; ");
            }
            write!(r, "{name} (got {value})").expect("writing to a String");
        }
    }
    reasons
}

impl Predictor for Apply {
    type Model = Model;

    fn open(_task: &Task, mut model: Model) -> Result<Self> {
        let mut tests = Vec::new();
        for rule in model.rules {
            let test = match &rule.check {
                Check::Unique => match model.repeated.remove(&rule.name) {
                    Some(h) => RowTest::Repeated(h.0),
                    None => continue,
                },
                check => RowTest::of(check)
                    .map_err(|e| Error::InvalidArgument(format!("rule {:?}: {e}", rule.name)))?
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("rule {:?}: {} is no row check", rule.name, check.name()))
                    })?,
            };
            tests.push((rule, test));
        }
        Ok(Apply { tests })
    }

    /// Its rules checked (their columns are, with their data, when it
    /// fits); the rows it passes on keep their schema.
    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        plan()?;
        Ok(Some(input.to_vec()))
    }

    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
        if self.tests.is_empty() {
            return Ok(Some(batch));
        }
        let mut reader = Reader::new(&batch);
        let mut failures = Vec::with_capacity(self.tests.len());
        for (rule, test) in &self.tests {
            failures.push((rule.name.as_str(), reader.failures(rule, test)?));
        }
        if failures.iter().all(|(_, f)| f.is_empty()) {
            return Ok(Some(batch));
        }
        let reasons = reasons(batch.num_rows() as usize, &failures);
        let bad: Vec<bool> = reasons.iter().map(|r| !r.is_empty()).collect();
        let why: Vec<String> = reasons.into_iter().filter(|r| !r.is_empty()).collect();
        wasmpipe_sdk::quarantine(&batch.filter_rows(&bad)?, &why)?;
        let good: Vec<bool> = bad.iter().map(|b| !b).collect();
        Ok(Some(batch.filter_rows(&good)?))
    }
}

wasmpipe_sdk::export_estimator!(Validate, Apply);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<Vec<Rule>, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        resolve(&config)
    }

    fn rule(json: &str) -> std::result::Result<Rule, String> {
        parse(&format!("{{\"rules\": [{json}]}}")).map(|mut r| r.remove(0))
    }

    #[test]
    fn default_names_say_what_the_rule_checks() {
        let names: Vec<String> = parse(
            r#"{"examples": 5, "rules": [
                {"column": "age", "check": "not_null", "policy": "quarantine"},
                {"column": "age", "check": "range", "min": 0, "max": 120, "policy": "quarantine"},
                {"column": "age", "check": "range", "min": 0.5},
                {"column": "age", "check": "range", "max": 120},
                {"column": "sex", "check": "allowed", "values": ["M", "F"], "policy": "warn"},
                {"column": "code", "check": "allowed", "values": [1, 2.5]},
                {"column": "email", "check": "regex", "pattern": "^[^@]+@[^@]+$", "policy": "quarantine"},
                {"column": "id", "check": "unique"},
                {"check": "row_count", "min": 100, "max": 1000000},
                {"check": "row_count", "min": 1, "name": "not empty"},
                {"column": "bmi", "check": "max_null_fraction", "max": 0.05, "policy": "warn"}
            ]}"#,
        )
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
        assert_eq!(
            names,
            [
                "age: not_null",
                "age: range [0, 120]",
                "age: range >= 0.5",
                "age: range <= 120",
                "sex: allowed [M, F]",
                "code: allowed [1, 2.5]",
                "email: regex ^[^@]+@[^@]+$",
                "id: unique",
                "row_count [100, 1000000]",
                "not empty",
                "bmi: max_null_fraction 0.05",
            ]
        );
        let r = rule(r#"{"column": "age", "check": "not_null"}"#).unwrap();
        assert_eq!(r.policy, Policy::Fail, "the default policy");
    }

    #[test]
    fn config_mistakes_name_the_rule() {
        let err = |json: &str| rule(json).unwrap_err();
        let e = err(r#"{"column": "email", "check": "regex", "pattern": "([a-z"}"#);
        assert!(e.starts_with("rules[0] (Regex check): invalid pattern"), "{e}");
        let e = err(r#"{"name": "mail", "column": "email", "check": "regex", "pattern": "("}"#);
        assert!(e.starts_with("rule \"mail\": invalid pattern"), "{e}");
        assert!(
            err(r#"{"column": "a", "check": "range", "min": 0, "pattern": "x"}"#).contains("`pattern` does not apply")
        );
        assert!(err(r#"{"column": "a", "check": "range"}"#).contains("needs `min`, `max` or both"));
        assert!(err(r#"{"column": "a", "check": "range", "min": 2, "max": 1}"#).contains("above max"));
        assert!(err(r#"{"check": "not_null"}"#).contains("needs a `column`"));
        assert!(err(r#"{"column": "a", "check": "row_count", "min": 1}"#).contains("takes no `column`"));
        assert!(err(r#"{"check": "row_count", "min": 1.5}"#).contains("whole number"));
        assert!(
            err(r#"{"check": "row_count", "min": 1, "policy": "quarantine"}"#).contains("does not apply to row_count")
        );
        let e = err(r#"{"column": "a", "check": "max_null_fraction", "max": 0.1, "policy": "quarantine"}"#);
        assert!(e.contains("use \"fail\" or \"warn\""), "{e}");
        assert!(err(r#"{"column": "a", "check": "max_null_fraction", "max": 1.5}"#).contains("[0, 1]"));
        assert!(err(r#"{"column": "a", "check": "allowed", "values": []}"#).contains("non-empty"));
        assert!(err(r#"{"column": "a", "check": "allowed", "values": ["x", 1]}"#).contains("mixes"));
        assert!(err(r#"{"column": "a", "check": "unique", "polcy": "warn"}"#).contains("unknown field `polcy`"));
        assert!(err(r#"{"column": "a", "check": "uniq"}"#).contains("unknown variant `uniq`"));
        let e = parse(r#"{"rules": [{"column": "a", "check": "unique"}, {"column": "a", "check": "unique"}]}"#);
        assert!(e.unwrap_err().contains("two rules are named \"a: unique\""));
        assert!(parse(r#"{"rules": []}"#).unwrap_err().contains("at least one rule"));
        assert!(parse(r#"{"examples": 5000, "rules": [{"check": "row_count", "min": 1}]}"#).is_err());
    }

    fn floats(v: &[Option<f64>]) -> Cells {
        Cells::Float(v.to_vec())
    }

    fn strs(v: &[Option<&str>]) -> Cells {
        Cells::Str(v.iter().map(|s| s.map(String::from)).collect())
    }

    fn test_of(json: &str) -> RowTest {
        RowTest::of(&rule(json).unwrap().check).unwrap().unwrap()
    }

    #[test]
    fn row_checks_pass_nulls_and_fail_nan() {
        let range = test_of(r#"{"column": "a", "check": "range", "min": 0, "max": 120}"#);
        let ages = floats(&[Some(30.0), Some(150.0), None, Some(f64::NAN), Some(0.0), Some(120.0), Some(-0.5)]);
        let got = row_failures(&range, &ages).unwrap();
        assert_eq!(got, vec![(1, "150".into()), (3, "NaN".into()), (6, "-0.5".into())]);
        let ints = Cells::Int(vec![Some(121), None, Some(7)]);
        assert_eq!(row_failures(&range, &ints).unwrap(), vec![(0, "121".into())]);
        assert_eq!(row_failures(&RowTest::NotNull, &ages).unwrap(), vec![(2, "null".into())]);
        assert_eq!(
            row_failures(&RowTest::NotNull, &Cells::Nulls(vec![false, true])).unwrap(),
            vec![(1, "null".into())]
        );

        let allowed = test_of(r#"{"column": "a", "check": "allowed", "values": ["M", "F"]}"#);
        let sex = strs(&[Some("M"), Some("X"), None, Some("f")]);
        assert_eq!(row_failures(&allowed, &sex).unwrap(), vec![(1, "X".into()), (3, "f".into())]);
        let codes = test_of(r#"{"column": "a", "check": "allowed", "values": [1, 2]}"#);
        let got = row_failures(&codes, &floats(&[Some(1.0), Some(2.5), None, Some(f64::NAN)])).unwrap();
        assert_eq!(got, vec![(1, "2.5".into()), (3, "NaN".into())]);
        assert_eq!(row_failures(&codes, &Cells::Int(vec![Some(2), Some(3)])).unwrap(), vec![(1, "3".into())]);

        // is_match finds a match anywhere: users anchor their own patterns.
        let anchored = test_of(r#"{"column": "a", "check": "regex", "pattern": "^[^@]+@[^@]+$"}"#);
        let loose = test_of(r#"{"column": "a", "check": "regex", "pattern": "@"}"#);
        let mail = strs(&[Some("a@b"), Some("x@"), None, Some("a@b@c")]);
        assert_eq!(row_failures(&anchored, &mail).unwrap(), vec![(1, "x@".into()), (3, "a@b@c".into())]);
        assert_eq!(row_failures(&loose, &mail).unwrap(), vec![]);
    }

    #[test]
    fn checks_refuse_columns_of_another_type() {
        let range = test_of(r#"{"column": "a", "check": "range", "min": 0}"#);
        let allowed = test_of(r#"{"column": "a", "check": "allowed", "values": ["M"]}"#);
        assert!(row_failures(&range, &strs(&[Some("1")])).is_none());
        assert!(row_failures(&allowed, &floats(&[Some(1.0)])).is_none());
        assert!(row_failures(&RowTest::Repeated(vec![]), &Cells::Nulls(vec![false])).is_none());
        let r = rule(r#"{"column": "sex", "check": "allowed", "values": ["M"]}"#).unwrap();
        let e = wrong_type(&r, "float64", allowed.needs());
        assert!(
            matches!(&e, Error::TypeMismatch(m) if m == "rule \"sex: allowed [M]\": column \"sex\" is float64, and allowed needs a utf8 column"),
            "{e:?}"
        );
    }

    #[test]
    fn keys_hash_by_value_and_repeats_count_every_occurrence() {
        let h =
            key_hashes(&floats(&[Some(0.0), Some(-0.0), Some(f64::NAN), Some(-f64::NAN), Some(1.0), None])).unwrap();
        assert_eq!(h[0], h[1]);
        assert_eq!(h[2], h[3]);
        assert_ne!(h[0], h[4]);
        assert_eq!(h[5], None);
        let int = key_hashes(&Cells::Int(vec![Some(1)])).unwrap()[0];
        let string = key_hashes(&strs(&[Some("1")])).unwrap()[0];
        assert!(int != h[4] && int != string, "types hash apart");

        let ids = Cells::Int(vec![Some(17), Some(3), Some(17), None, Some(230), Some(17), None, Some(230), Some(5)]);
        let (repeated, rows) = repeats(key_hashes(&ids).unwrap().into_iter().flatten().collect());
        assert_eq!((repeated.len(), rows), (2, 5), "17 three times and 230 twice; nulls are no key");
        let got = repeated_rows(&repeated, &ids).unwrap();
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 2, 4, 5, 7]);
        assert_eq!(got[0].1, "17");
    }

    #[test]
    fn hashes_encode_as_hex_and_refuse_garbage() {
        let h = Hashes(vec![0, 1, u64::MAX, 0xdead_beef]);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json.len(), 2 + 16 * 4);
        assert_eq!(serde_json::from_str::<Hashes>(&json).unwrap(), h);
        assert!(serde_json::from_str::<Hashes>("\"0123\"").is_err());
        assert!(serde_json::from_str::<Hashes>("\"000000000000000g\"").is_err());
        assert!(serde_json::from_str::<Hashes>("\"+00000000000000f\"").is_err());
    }

    /// Tally a range rule over `values` cut into partitions of `sizes`
    /// (batches of 2 rows), as the fit does.
    fn tally_partitions(values: &[Option<f64>], sizes: &[usize], k: usize) -> Vec<State> {
        let test = RowTest::Range { min: 0.0, max: 10.0 };
        let mut states = Vec::new();
        let mut start = 0;
        for (p, &n) in sizes.iter().enumerate() {
            let mut tally = Tally::default();
            let mut rows = 0;
            for batch in values[start..start + n].chunks(2) {
                let failures = row_failures(&test, &floats(batch)).unwrap();
                tally.failed += failures.len() as u64;
                add_examples(&mut tally.examples, failures, p as u32, rows, k);
                rows += batch.len() as u64;
            }
            states.push(State::Check { partition: p as u32, rows, tallies: vec![tally] });
            start += n;
        }
        states
    }

    fn counts_and_examples(state: &State) -> (u64, u64, Vec<String>) {
        let State::Check { rows, tallies, .. } = state else { panic!("a check state") };
        (*rows, tallies[0].failed, tallies[0].examples.iter().map(|e| e.2.clone()).collect())
    }

    #[test]
    fn examples_are_the_first_failures_in_data_order_at_any_partitioning() {
        let values: Vec<Option<f64>> = (0..40)
            .map(|i| {
                if i % 7 == 3 {
                    Some(100.0 + i as f64)
                } else if i == 5 {
                    None
                } else {
                    Some(1.0)
                }
            })
            .collect();
        let k = 3;
        let want = (40, 6, vec!["103".to_string(), "110".into(), "117".into()]);
        for sizes in [vec![40], vec![14, 13, 13], vec![5, 5, 5, 5, 5, 5, 5, 5], vec![0, 3, 37]] {
            let states = || tally_partitions(&values, &sizes, k);
            // Left to right, right to left, and as a balanced tree: the same.
            let left = states().into_iter().reduce(|a, b| merge_states(a, b, k).unwrap()).unwrap();
            let right = states().into_iter().rev().reduce(|a, b| merge_states(b, a, k).unwrap()).unwrap();
            fn tree(mut s: Vec<State>, k: usize) -> State {
                if s.len() == 1 {
                    return s.pop().unwrap();
                }
                let rest = s.split_off(s.len() / 2);
                merge_states(tree(s, k), tree(rest, k), k).unwrap()
            }
            for merged in [left, right, tree(states(), k)] {
                assert_eq!(counts_and_examples(&merged), want, "partitions {sizes:?}");
            }
        }
    }

    #[test]
    fn states_of_different_passes_do_not_merge() {
        let check = State::Check { partition: 0, rows: 0, tallies: vec![] };
        let summary = Summary { rows: 0, tallies: vec![], repeated: vec![] };
        let repeats = State::Repeats { partition: 1, rows: 0, examples: vec![], summary };
        assert!(merge_states(check, repeats, 5).is_err());
    }

    #[test]
    fn verdicts_and_messages() {
        let rules = parse(
            r#"{"rules": [
                {"column": "id", "check": "unique"},
                {"check": "row_count", "min": 100, "max": 1000000},
                {"check": "row_count", "min": 1000, "name": "big"},
                {"column": "bmi", "check": "max_null_fraction", "max": 0.05, "policy": "warn"},
                {"column": "age", "check": "not_null", "policy": "quarantine"}
            ]}"#,
        )
        .unwrap();
        let ex = |v: &[&str]| v.iter().enumerate().map(|(i, s)| Example(0, i as u64, s.to_string())).collect();
        let tallies = vec![
            Tally { failed: 3, examples: ex(&["17", "17", "230"]), hashes: Hashes::default() },
            Tally::default(),
            Tally::default(),
            Tally { failed: 30, examples: vec![], hashes: Hashes::default() },
            Tally { failed: 0, examples: vec![], hashes: Hashes::default() },
        ];
        let summary = Summary { rows: 442, tallies, repeated: vec![Hashes::default(); 5] };
        let v = verdicts(&rules, &summary);
        assert_eq!(v.iter().map(|v| v.passed).collect::<Vec<_>>(), [false, true, false, false, true]);
        assert!(v.iter().all(|v| v.rows_checked == 442));
        assert_eq!(message(&rules[0], &v[0]), "rule \"id: unique\": 3 of 442 rows failed (examples: 17, 17, 230)");
        assert_eq!(message(&rules[2], &v[2]), "rule \"big\": 442 rows, expected at least 1000");
        assert_eq!(
            message(&rules[3], &v[3]),
            "rule \"bmi: max_null_fraction 0.05\": 30 of 442 rows are null, a fraction of 0.0679 (at most 0.05)"
        );
        let doc = serde_json::to_value(Report { rows: 442, passed: false, rules: &v }).unwrap();
        assert_eq!(doc["rules"][1]["column"], serde_json::Value::Null);
        assert_eq!(doc["rules"][3]["policy"], "warn");
        assert_eq!(doc["rules"][0]["examples"], serde_json::json!(["17", "17", "230"]));
        // 22 of 442 is 0.0498: within 0.05.
        let mut summary = summary;
        summary.tallies[3].failed = 22;
        assert!(verdicts(&rules, &summary)[3].passed);
    }

    #[test]
    fn summaries_count_repeated_keys_and_the_model_keeps_quarantine_rules() {
        let rules = parse(
            r#"{"rules": [
                {"column": "id", "check": "unique", "policy": "quarantine"},
                {"column": "age", "check": "range", "min": 0, "max": 120, "policy": "quarantine"},
                {"column": "sex", "check": "allowed", "values": ["M", "F"], "policy": "warn"}
            ]}"#,
        )
        .unwrap();
        let hashes = Hashes(vec![5, 9, 5, 1, 5, 9, 2]);
        let tallies = vec![Tally { failed: 0, examples: vec![], hashes }, Tally::default(), Tally::default()];
        let summary = summarize(&rules, 7, tallies);
        assert_eq!(summary.tallies[0].failed, 5);
        assert_eq!(summary.repeated[0], Hashes(vec![5, 9]));
        assert!(summary.tallies[0].hashes.is_empty(), "the carry holds no per-row hashes");
        let m = model(&rules, &summary);
        assert_eq!(m.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["id: unique", "age: range [0, 120]"]);
        assert_eq!(m.repeated["id: unique"], Hashes(vec![5, 9]));
        // The model round-trips through its JSON.
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""check":"range","min":0.0,"max":120.0"#), "{json}");
        assert_eq!(serde_json::from_str::<Model>(&json).unwrap(), m);
    }

    #[test]
    fn reasons_name_every_broken_rule_with_its_value() {
        let failures = [
            ("age: range [0, 120]", vec![(1, "150".to_string())]),
            ("email: regex @", vec![(1, "x".into()), (3, "y".into())]),
        ];
        let got = reasons(4, &failures);
        assert_eq!(got, ["", "age: range [0, 120] (got 150); email: regex @ (got x)", "", "email: regex @ (got y)"]);
    }
}

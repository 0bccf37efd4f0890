//! One-hot encoder (estimator): learns the categories (distinct values) of
//! the listed string or integer columns and adds one float64 0/1 column per
//! category, `<column>_<category>`, as scikit-learn's `OneHotEncoder`
//! (dense output, `drop=None`): same categories, same order, same names
//! (`get_feature_names_out`), same values.
//!
//! ```toml
//! [stage.onehot.config]
//! columns = ["species", "target"]   # utf8, int32 or int64 columns
//! handle_unknown = "error"          # default; or "ignore" (all zeros)
//! keep_original = false             # default: the encoded columns are dropped
//! null_category = true              # default: null is a category, as scikit-learn's
//! ```
//!
//! Categories are sorted as scikit-learn's `categories_`: strings by code
//! point (Rust's byte order of UTF-8 is code-point order, as Python's
//! string order), integers numerically. A column's categories are the
//! exact union over every partition, so the model does not depend on
//! partitioning. At most 4,096 categories per column (the output is
//! dense): more fails the fit, naming the column. The new columns follow
//! the batch's other columns, per listed column in order, its categories
//! in order.
//!
//! # Unknown values
//!
//! A value that the fit did not see fails the task under `"error"`, with a
//! message naming the column and the value; under `"ignore"` its row is all
//! zeros in that column's block, as scikit-learn's.
//!
//! # Nulls
//!
//! scikit-learn treats a missing value (`None`, NaN) as one more category,
//! sorted last; so does this stage (`null_category = true`): when the fit
//! sees a null in a column, that column gets a last indicator column
//! `<column>_null` (scikit-learn names it `<column>_None` or `<column>_nan`).
//! A null at transform time in a column whose fit saw none is an unknown
//! value (error, or all zeros under `"ignore"`), again as scikit-learn's.
//! With `null_category = false` nulls are not learned and a null row is all
//! zeros in its column's block, whatever `handle_unknown` says. Output
//! columns have no nulls. A column with no category to learn fails the fit.
//! A string category spelling a name twice (`"null"` beside the null
//! category) fails the fit too.
//!
//! # Where it runs
//!
//! No kernel returns distinct values, and strings have no kernels at all,
//! so the encoded columns are copied into the guest, at fit (`read_utf8`,
//! or `read_i64` with `validity`; each batch's values are sorted, deduped
//! and merged into the state) and at transform, where each row's category
//! is found by binary search and the 0/1 columns go back with `from_f64`.
//! Integers are compared as i64 in the guest, exactly (the f64 `compare`
//! kernel would not tell integers above 2^53 apart), and one pass finds the
//! unknown values to report.
//!
//! # Model
//!
//! JSON: `columns`, `categories` (per column `{"str": [...]}` or
//! `{"int": [...]}`, scikit-learn's `categories_` less the missing value),
//! `nulls` (per column, whether null is its last category), `names` (the
//! output columns, per column), `handle_unknown`, `keep_original`,
//! `null_category`.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Apply, Batch, Column, DataType, Error, Estimator, Outcome, Result, Task};

/// The most categories one column may have.
const MAX_CATEGORIES: usize = 4096;

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "snake_case")]
enum Unknown {
    Error,
    Ignore,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    columns: Vec<String>,
    #[serde(default = "error")]
    handle_unknown: Unknown,
    #[serde(default)]
    keep_original: bool,
    #[serde(default = "yes")]
    null_category: bool,
}

fn error() -> Unknown {
    Unknown::Error
}

fn yes() -> bool {
    true
}

fn config() -> Result<Config> {
    let config: Config = wasmpipe_sdk::config()?;
    if config.columns.is_empty() {
        return Err(Error::InvalidConfig("columns: name at least one column".into()));
    }
    if let Some(c) = config.columns.iter().enumerate().find_map(|(i, c)| config.columns[..i].contains(c).then_some(c)) {
        return Err(Error::InvalidConfig(format!("columns: {c:?} is listed twice")));
    }
    Ok(config)
}

/// Sorted, distinct values of one column.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Values {
    Int(Vec<i64>),
    Str(Vec<String>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Str(v) => v.len(),
        }
    }

    /// The output name of each category.
    fn names(&self, column: &str) -> Vec<String> {
        match self {
            Values::Int(v) => v.iter().map(|x| format!("{column}_{x}")).collect(),
            Values::Str(v) => v.iter().map(|x| format!("{column}_{x}")).collect(),
        }
    }
}

/// One column's rows as copied into the guest; `None` is null.
enum Rows {
    Int(Vec<Option<i64>>),
    Str(Vec<Option<String>>),
}

/// Copy column `name` into the guest.
fn read(batch: &Batch, name: &str) -> Result<Rows> {
    let x: Column = batch.column(name)?;
    match x.data_type() {
        DataType::Utf8 => Ok(Rows::Str(x.read_utf8()?)),
        DataType::Int64 | DataType::Int32 => {
            let values = x.read_i64()?;
            Ok(Rows::Int(match x.validity() {
                Some(valid) => values.into_iter().zip(valid).map(|(v, ok)| ok.then_some(v)).collect(),
                None => values.into_iter().map(Some).collect(),
            }))
        }
        other => Err(Error::TypeMismatch(format!(
            "column {name:?}: onehot encodes utf8, int32 and int64 columns, not {other:?} (cast it first)"
        ))),
    }
}

/// The sorted distinct non-null values of `rows`, and whether any is null.
fn distinct<T: Ord + Clone>(rows: &[Option<T>]) -> (Vec<T>, bool) {
    let mut v: Vec<T> = rows.iter().flatten().cloned().collect();
    v.sort_unstable();
    v.dedup();
    (v, rows.iter().any(Option::is_none))
}

/// The sorted union of two sorted, distinct lists.
fn union<T: Ord>(a: Vec<T>, b: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x == y => {
                b.next();
                a.next()
            }
            (Some(x), Some(y)) if x < y => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => return out,
        };
        out.extend(next);
    }
}

/// What the fit has seen of one column.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
struct Seen {
    /// `None` until a batch of the column is seen.
    values: Option<Values>,
    null: bool,
}

impl Seen {
    fn merge(self, other: Seen, column: &str) -> Result<Seen> {
        let values = match (self.values, other.values) {
            (None, v) | (v, None) => v,
            (Some(Values::Int(a)), Some(Values::Int(b))) => Some(Values::Int(union(a, b))),
            (Some(Values::Str(a)), Some(Values::Str(b))) => Some(Values::Str(union(a, b))),
            _ => wasmpipe_sdk::fail!("column {column:?} holds integers in one partition and strings in another"),
        };
        if let Some(v) = &values
            && v.len() > MAX_CATEGORIES
        {
            wasmpipe_sdk::fail!("column {column:?} has more than {MAX_CATEGORIES} categories ({} so far)", v.len());
        }
        Ok(Seen { values, null: self.null || other.null })
    }

    fn of(rows: &Rows) -> Seen {
        let (values, null) = match rows {
            Rows::Int(r) => {
                let (v, n) = distinct(r);
                (Values::Int(v), n)
            }
            Rows::Str(r) => {
                let (v, n) = distinct(r);
                (Values::Str(v), n)
            }
        };
        Seen { values: Some(values), null }
    }
}

#[derive(Serialize, Deserialize)]
struct State {
    seen: Vec<Seen>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Model {
    columns: Vec<String>,
    categories: Vec<Values>,
    nulls: Vec<bool>,
    names: Vec<Vec<String>>,
    handle_unknown: Unknown,
    keep_original: bool,
    null_category: bool,
}

/// The model from the merged state: categories, names, and their checks.
fn model(config: Config, seen: Vec<Seen>) -> Result<Model> {
    let mut categories = Vec::new();
    let mut nulls = Vec::new();
    let mut names: Vec<Vec<String>> = Vec::new();
    for (column, s) in config.columns.iter().zip(seen) {
        let values = s.values.unwrap_or(Values::Int(Vec::new()));
        let null = s.null && config.null_category;
        if values.len() == 0 && !null {
            wasmpipe_sdk::fail!("column {column:?} has no values to learn categories from");
        }
        let mut n = values.names(column);
        if null {
            n.push(format!("{column}_null"));
        }
        categories.push(values);
        nulls.push(null);
        names.push(n);
    }
    let mut all: Vec<&String> = names.iter().flatten().collect();
    all.sort();
    if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
        wasmpipe_sdk::fail!("two categories make the same output column {:?}", w[0]);
    }
    Ok(Model {
        columns: config.columns,
        categories,
        nulls,
        names,
        handle_unknown: config.handle_unknown,
        keep_original: config.keep_original,
        null_category: config.null_category,
    })
}

struct OneHot;

impl Estimator for OneHot {
    type State = State;
    type Carry = ();
    type Model = Model;

    fn begin(_task: &Task, _carry: Option<()>) -> Result<State> {
        Ok(State { seen: vec![Seen::default(); config()?.columns.len()] })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let config = config()?;
        for (name, s) in config.columns.iter().zip(&mut state.seen) {
            let rows = read(batch, name)?;
            *s = std::mem::take(s).merge(Seen::of(&rows), name)?;
        }
        Ok(())
    }

    fn merge(left: State, right: State) -> Result<State> {
        let config = config()?;
        let seen = left
            .seen
            .into_iter()
            .zip(right.seen)
            .zip(&config.columns)
            .map(|((a, b), name)| a.merge(b, name))
            .collect::<Result<_>>()?;
        Ok(State { seen })
    }

    fn finalize(state: State, _pass: u32) -> Result<Outcome<Model, ()>> {
        let model = model(config()?, state.seen)?;
        let counts: Vec<usize> = model.names.iter().map(Vec::len).collect();
        wasmpipe_sdk::debug!("categories per column: {counts:?}");
        Ok(Outcome::Done(model))
    }
}

/// Per row, the index of its category among `categories` (then `null`, the
/// null category's index if learned), or `None` for a row of zeros.
/// `Err` names the first unknown value under `Unknown::Error` (strings
/// quoted, integers bare).
fn codes<T: Ord + Debug>(
    rows: &[Option<T>],
    categories: &[T],
    null: Option<usize>,
    null_category: bool,
    unknown: Unknown,
    column: &str,
) -> std::result::Result<Vec<Option<usize>>, String> {
    let hint = "not seen in fit; handle_unknown = \"ignore\" encodes it as all zeros";
    rows.iter()
        .map(|row| match row {
            None if !null_category => Ok(None),
            None => match (null, unknown) {
                (Some(i), _) => Ok(Some(i)),
                (None, Unknown::Ignore) => Ok(None),
                (None, Unknown::Error) => Err(format!("column {column:?}: unknown category null ({hint})")),
            },
            Some(v) => match (categories.binary_search(v), unknown) {
                (Ok(i), _) => Ok(Some(i)),
                (Err(_), Unknown::Ignore) => Ok(None),
                (Err(_), Unknown::Error) => Err(format!("column {column:?}: unknown category {v:?} ({hint})")),
            },
        })
        .collect()
}

/// The 0/1 columns of `width` categories for `codes`.
fn indicators(codes: &[Option<usize>], width: usize) -> Vec<Vec<f64>> {
    let mut out = vec![vec![0.0; codes.len()]; width];
    for (row, code) in codes.iter().enumerate() {
        if let Some(c) = code {
            out[*c][row] = 1.0;
        }
    }
    out
}

impl Apply for Model {
    fn apply(&self, batch: Batch) -> Result<Option<Batch>> {
        let mut blocks = Vec::with_capacity(self.columns.len());
        for (i, name) in self.columns.iter().enumerate() {
            let null = self.nulls[i].then_some(self.categories[i].len());
            let codes = match (read(&batch, name)?, &self.categories[i]) {
                (Rows::Int(r), Values::Int(c)) => codes(&r, c, null, self.null_category, self.handle_unknown, name),
                (Rows::Str(r), Values::Str(c)) => codes(&r, c, null, self.null_category, self.handle_unknown, name),
                // A column fitted with nulls only has no typed categories.
                (Rows::Str(r), Values::Int(c)) if c.is_empty() => {
                    codes(&r, &[], null, self.null_category, self.handle_unknown, name)
                }
                _ => {
                    return Err(Error::TypeMismatch(format!(
                        "column {name:?} has another type than it had when the encoder was fitted"
                    )));
                }
            }
            .map_err(Error::StageFailed)?;
            blocks.push(indicators(&codes, self.names[i].len()));
        }
        let mut out = if self.keep_original { batch } else { batch.drop_columns(&self.columns)? };
        for (names, block) in self.names.iter().zip(blocks) {
            for (name, values) in names.iter().zip(block) {
                out = out.with_f64s(name, &values)?;
            }
        }
        Ok(Some(out))
    }
}

wasmpipe_sdk::export_estimator!(OneHot, Model);

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn categories_sort_like_scikit_learn() {
        // Code-point order: uppercase before lowercase, 'é' (U+00E9) after 'z',
        // '😀' (U+1F600) after U+FFFD, "" first.
        let rows: Vec<Option<String>> =
            ["b", "a", "Z", "é", "z", "", "😀", "\u{fffd}", "a", "ab"].iter().map(|s| Some(s.to_string())).collect();
        let (v, null) = distinct(&rows);
        assert_eq!(v, strs(&["", "Z", "a", "ab", "b", "z", "é", "\u{fffd}", "😀"]));
        assert!(!null);
        let (v, null) = distinct(&[Some(10i64), None, Some(-3), Some(2), Some(10)]);
        assert_eq!(v, vec![-3, 2, 10], "numerically, not as text");
        assert!(null);
    }

    #[test]
    fn partition_sets_merge_exactly_in_any_order() {
        let parts: Vec<Seen> = [vec![Some(3i64), Some(1)], vec![None, Some(2)], vec![], vec![Some(3), Some(-7)]]
            .iter()
            .map(|r| Seen::of(&Rows::Int(r.clone())))
            .collect();
        let want = Seen { values: Some(Values::Int(vec![-7, 1, 2, 3])), null: true };
        let fold =
            |order: &[usize]| order.iter().fold(Seen::default(), |acc, &i| acc.merge(parts[i].clone(), "x").unwrap());
        assert_eq!(fold(&[0, 1, 2, 3]), want);
        assert_eq!(fold(&[3, 2, 1, 0]), want);
        // Tree-shaped, as the host merges partitions.
        let left = parts[0].clone().merge(parts[1].clone(), "x").unwrap();
        let right = parts[2].clone().merge(parts[3].clone(), "x").unwrap();
        assert_eq!(right.merge(left, "x").unwrap(), want);
        assert_eq!(union(strs(&["a", "c"]), strs(&["b", "c", "d"])), strs(&["a", "b", "c", "d"]));
        assert_eq!(Seen::default().merge(Seen::default(), "x").unwrap(), Seen::default());
    }

    #[test]
    fn mixed_types_and_too_many_categories_fail_the_merge() {
        let ints = Seen { values: Some(Values::Int(vec![1])), null: false };
        let strings = Seen { values: Some(Values::Str(strs(&["a"]))), null: false };
        assert!(matches!(ints.merge(strings, "c"), Err(Error::StageFailed(m)) if m.contains("\"c\"")));
        let many = |lo: i64| Seen { values: Some(Values::Int((lo..lo + 3000).collect())), null: false };
        assert!(matches!(many(0).merge(many(5000), "c"), Err(Error::StageFailed(m)) if m.contains("4096")));
    }

    fn config(columns: &[&str], null_category: bool) -> Config {
        Config { columns: strs(columns), handle_unknown: Unknown::Ignore, keep_original: false, null_category }
    }

    #[test]
    fn names_follow_get_feature_names_out_with_null_last() {
        let seen = vec![
            Seen { values: Some(Values::Str(strs(&["setosa", "virginica"]))), null: true },
            Seen { values: Some(Values::Int(vec![0, 2])), null: false },
        ];
        let m = model(config(&["species", "target"], true), seen.clone()).unwrap();
        assert_eq!(
            m.names,
            vec![strs(&["species_setosa", "species_virginica", "species_null"]), strs(&["target_0", "target_2"])]
        );
        assert_eq!(m.nulls, vec![true, false]);
        let m = model(config(&["species", "target"], false), seen).unwrap();
        assert_eq!(m.names[0], strs(&["species_setosa", "species_virginica"]));
        // A string "null" beside the null category would make one name twice.
        let clash = vec![Seen { values: Some(Values::Str(strs(&["null"]))), null: true }];
        assert!(matches!(model(config(&["c"], true), clash), Err(Error::StageFailed(m)) if m.contains("c_null")));
        let empty = vec![Seen { values: None, null: true }];
        assert!(model(config(&["c"], false), empty).is_err(), "nothing to learn");
    }

    #[test]
    fn unknown_values_error_or_give_zeros() {
        let cats = strs(&["a", "c"]);
        let rows = vec![Some("c".to_string()), Some("b".to_string()), None, Some("a".to_string())];
        // "ignore": the unseen "b" and the unseen null are rows of zeros.
        let got = codes(&rows, &cats, None, true, Unknown::Ignore, "x").unwrap();
        assert_eq!(got, vec![Some(1), None, None, Some(0)]);
        assert_eq!(indicators(&got, 2), vec![vec![0.0, 0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0, 0.0]]);
        // "error": the first unseen value, named with its column.
        let e = codes(&rows, &cats, None, true, Unknown::Error, "x").unwrap_err();
        assert!(e.starts_with("column \"x\": unknown category \"b\""), "{e}");
        // A learned null is the last category; with null_category = false nulls are zeros, never unknown.
        assert_eq!(codes(&rows[2..], &cats, Some(2), true, Unknown::Error, "x").unwrap(), vec![Some(2), Some(0)]);
        assert_eq!(codes(&rows[2..], &cats, None, false, Unknown::Error, "x").unwrap(), vec![None, Some(0)]);
        let e = codes(&rows[2..], &cats, None, true, Unknown::Error, "x").unwrap_err();
        assert!(e.contains("unknown category null"), "{e}");
        let e = codes(&[Some(5i64)], &[1, 2], None, true, Unknown::Error, "target").unwrap_err();
        assert!(e.starts_with("column \"target\": unknown category 5 "), "{e}");
    }
}

//! Polynomial features (transformer): appends the products of the listed
//! columns of degree 2 up to `degree` (at most 3), as scikit-learn's
//! `PolynomialFeatures(degree, interaction_only, include_bias=False)`
//! minus the degree-1 terms, which are the input columns themselves and
//! stay where they are.
//!
//! ```toml
//! [stage.poly.config]
//! columns = ["a", "b"]
//! degree = 2                 # default; 2 or 3
//! interaction_only = false   # default; true leaves out powers (a^2, a^2 b...)
//! include_bias = false       # default; true also appends the constant column "1"
//! ```
//!
//! With columns `a, b` and degree 2 the new columns are `a^2`, `a b`, `b^2`:
//! scikit-learn's `get_feature_names_out` names, in its order (degree by
//! degree, then the combinations with replacement of the column indices in
//! lexicographic order). A name that already exists in the batch fails the
//! task.
//!
//! # Math and where it runs
//!
//! Each term is the product of its factors left to right, computed from
//! the term one degree lower (`(a * a) * b`). Degree 2 agrees with
//! scikit-learn bit for bit; for degree 3 scikit-learn multiplies in
//! another order, and the values differ by rounding only (2.5e-16 relative
//! on the test data). The products
//! are `mul` kernels on host columns; nothing is copied into the sandbox.
//! Nulls propagate (a null factor gives a null term); NaN and infinities
//! follow IEEE-754.

use serde::Deserialize;
use wasmpipe_sdk::{Batch, Column, Error, Result, Task, Transformer};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    columns: Vec<String>,
    #[serde(default = "two")]
    degree: usize,
    #[serde(default)]
    interaction_only: bool,
    #[serde(default)]
    include_bias: bool,
}

fn two() -> usize {
    2
}

/// The terms of degree 2..=`degree` over `n` columns, each a non-decreasing
/// (strictly increasing with `interaction_only`) list of column indices.
fn terms(n: usize, degree: usize, interaction_only: bool) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut level: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    for _ in 2..=degree {
        let mut next = Vec::new();
        for t in &level {
            let last = *t.last().expect("non-empty term");
            let from = if interaction_only { last + 1 } else { last };
            for j in from..n {
                let mut term = t.clone();
                term.push(j);
                next.push(term);
            }
        }
        out.extend(next.iter().cloned());
        level = next;
    }
    out
}

/// scikit-learn's name of a term: `a^2 b`.
fn name(term: &[usize], columns: &[String]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < term.len() {
        let power = term[i..].iter().take_while(|&&j| j == term[i]).count();
        let c = &columns[term[i]];
        parts.push(if power == 1 { c.clone() } else { format!("{c}^{power}") });
        i += power;
    }
    parts.join(" ")
}

struct Poly {
    config: Config,
    terms: Vec<(String, Vec<usize>)>,
}

impl Transformer for Poly {
    fn open(_task: &Task) -> Result<Self> {
        let config: Config = wasmpipe_sdk::config()?;
        if !(1..=3).contains(&config.degree) {
            return Err(Error::InvalidConfig(format!("degree: 1, 2 or 3, got {}", config.degree)));
        }
        if config.columns.is_empty() {
            return Err(Error::InvalidConfig("columns: name at least one column".into()));
        }
        let terms = terms(config.columns.len(), config.degree, config.interaction_only)
            .into_iter()
            .map(|t| (name(&t, &config.columns), t))
            .collect();
        Ok(Poly { config, terms })
    }

    fn transform(&mut self, mut batch: Batch) -> Result<Option<Batch>> {
        let existing = batch.column_names();
        let x: Vec<Column> = self.config.columns.iter().map(|c| batch.column(c)).collect::<Result<_>>()?;
        if self.config.include_bias {
            if existing.iter().any(|c| c == "1") {
                wasmpipe_sdk::fail!("the batch already has a column named \"1\"");
            }
            let one = x[0].is_null().cast(&wasmpipe_sdk::DataType::Float64)?.mul_scalar(0.0)?.add_scalar(1.0)?;
            batch = batch.with_column("1", &one)?;
        }
        // Products of degree d reuse those of degree d - 1: (a * a) * b.
        let mut done: Vec<(Vec<usize>, Column)> = Vec::new();
        for (name, term) in &self.terms {
            if existing.contains(name) {
                wasmpipe_sdk::fail!("the batch already has a column named {name:?}");
            }
            let prefix = &term[..term.len() - 1];
            let last = &x[term[term.len() - 1]];
            let value = match done.iter().find(|(t, _)| t == prefix) {
                Some((_, p)) => p.mul(last)?,
                None => x[prefix[0]].mul(last)?,
            };
            batch = batch.with_column(name, &value)?;
            done.push((term.clone(), value));
        }
        Ok(Some(batch))
    }
}

wasmpipe_sdk::export_transformer!(Poly);

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize, degree: usize, interaction_only: bool) -> Vec<String> {
        let cols: Vec<String> = ["a", "b", "c"][..n].iter().map(|s| s.to_string()).collect();
        terms(n, degree, interaction_only).iter().map(|t| name(t, &cols)).collect()
    }

    #[test]
    fn names_and_order_follow_scikit_learn() {
        assert_eq!(names(2, 2, false), ["a^2", "a b", "b^2"]);
        assert_eq!(names(3, 2, true), ["a b", "a c", "b c"]);
        assert_eq!(names(2, 3, false), ["a^2", "a b", "b^2", "a^3", "a^2 b", "a b^2", "b^3"]);
        assert_eq!(names(3, 3, true), ["a b", "a c", "b c", "a b c"]);
        assert!(names(3, 1, false).is_empty());
    }

    #[test]
    fn term_counts_are_binomial() {
        // C(n + d, d) - 1 - n terms of degree 2..=d.
        assert_eq!(terms(5, 3, false).len(), 56 - 1 - 5);
        assert_eq!(terms(5, 3, true).len(), 10 + 10);
    }
}

//! Missing-value imputer (estimator): replaces the nulls and NaNs of the
//! listed columns with one statistic per column, learned from the non-null,
//! non-NaN values, as scikit-learn's `SimpleImputer` (missing values are
//! NaN there; a blank CSV cell is a null here, and both count as missing).
//!
//! ```toml
//! [stage.impute.config]
//! columns = ["bmi", "bp"]
//! strategy = "median"   # "mean" (default), "median", "most_frequent" or "constant"
//! fill_value = 0.0      # "constant" only; default 0, as scikit-learn's
//! ```
//!
//! The imputed columns come out as float64 with no nulls and no NaNs (as
//! scikit-learn returns floats). A column with no value to learn from fails
//! the fit, naming it (scikit-learn would drop the column instead).
//!
//! # Math, exactness and where it runs
//!
//! * `mean`: sum / count of the values. Each batch's `summarize` kernel
//!   gives its count and sum, and partition states add up. Exact up to the
//!   rounding of the sums (relative 1e-15 on the test data).
//! * `median`: exact, the middle value, or the mean `(a + b) / 2` of the two
//!   middle values for an even count (numpy's median). Found in passes by
//!   the shared `quantiles` crate: pass 0 summarizes (count, min, max); pass
//!   1 collects the values when a column has at most 65,536 of them and
//!   otherwise narrows a window around the middle ranks by merged 1024-bin
//!   histograms (`compare`, `summarize` and `histogram` kernels), collecting
//!   once the window holds at most 65,536 values (see that crate's docs).
//!   There is no approximation: the median is the exact order statistic.
//! * `most_frequent`: exact counts of every distinct value (−0 counts as
//!   0), merged by adding counts; ties go to the smallest value, as
//!   scikit-learn's. No kernel returns distinct values with counts, so each
//!   batch's column is copied into the guest (`read_f64`), sorted and
//!   run-length counted; the state holds one `(value, count)` per distinct
//!   value, so this is for categorical and integer columns, not continuous
//!   ones.
//! * `constant`: `fill_value`; the fit learns nothing.
//!
//! Transform runs on kernels: `fill_null`, then `is_nan` and `if_then_else`
//! for NaNs. Nothing is copied into the sandbox.
//!
//! # Model
//!
//! JSON: `columns`, `strategy`, `statistics` (scikit-learn's
//! `statistics_`), `counts` (values learned from, per column).

use quantiles::{Pass, Search};
use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Apply, Batch, Column, DataType, Error, Estimator, Field, Outcome, Result, Schema, Task};

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "snake_case")]
enum Strategy {
    Mean,
    Median,
    MostFrequent,
    Constant,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    columns: Vec<String>,
    #[serde(default = "mean")]
    strategy: Strategy,
    fill_value: Option<f64>,
}

fn mean() -> Strategy {
    Strategy::Mean
}

fn config() -> Result<Config> {
    let config: Config = wasmpipe_sdk::config()?;
    if config.columns.is_empty() {
        return Err(Error::InvalidConfig("columns: name at least one column".into()));
    }
    if config.fill_value.is_some() && config.strategy != Strategy::Constant {
        return Err(Error::InvalidConfig("fill_value: only with strategy = \"constant\"".into()));
    }
    if config.fill_value.is_some_and(|v| !v.is_finite()) {
        return Err(Error::InvalidConfig("fill_value: must be a finite number".into()));
    }
    Ok(config)
}

/// Count, sum, min and max of one column's values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
struct Sums {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Sums {
    const EMPTY: Sums = Sums { n: 0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY };

    fn merge(a: Sums, b: Sums) -> Sums {
        if b.n == 0 {
            return a;
        }
        if a.n == 0 {
            return b;
        }
        Sums { n: a.n + b.n, sum: a.sum + b.sum, min: a.min.min(b.min), max: a.max.max(b.max) }
    }
}

/// Sorted `(value, count)` runs of `values` (NaN skipped, -0 as 0).
fn runs(values: &[f64]) -> Vec<(f64, u64)> {
    let mut v: Vec<f64> = values.iter().filter(|x| !x.is_nan()).map(|x| x + 0.0).collect();
    v.sort_by(f64::total_cmp);
    let mut out: Vec<(f64, u64)> = Vec::new();
    for x in v {
        match out.last_mut() {
            Some((y, n)) if *y == x => *n += 1,
            _ => out.push((x, 1)),
        }
    }
    out
}

/// Merge two sorted run lists.
fn merge_runs(a: Vec<(f64, u64)>, b: Vec<(f64, u64)>) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                let n = x.1 + y.1;
                let v = x.0;
                a.next();
                b.next();
                (v, n)
            }
            (Some(x), Some(y)) if x.0 < y.0 => a.next().expect("peeked"),
            (Some(_), Some(_)) | (None, Some(_)) => b.next().expect("peeked"),
            (Some(_), None) => a.next().expect("peeked"),
            (None, None) => return out,
        };
        out.push(next);
    }
}

/// The most frequent value, the smallest of equally frequent ones.
fn mode(runs: &[(f64, u64)]) -> Option<f64> {
    // Runs are sorted ascending, so a strict `>` keeps the smallest.
    runs.iter()
        .fold(None, |best: Option<(f64, u64)>, &(v, n)| match best {
            Some((_, m)) if m >= n => best,
            _ => Some((v, n)),
        })
        .map(|(v, _)| v)
}

/// The 0-based ranks whose values make the median of `n` values.
fn median_ranks(n: u64) -> Vec<u64> {
    if n % 2 == 1 { vec![n / 2] } else { vec![n / 2 - 1, n / 2] }
}

#[derive(Serialize, Deserialize)]
enum State {
    /// Pass 0 of mean, median and constant.
    Sums(Vec<Sums>),
    /// Pass 0 of most_frequent.
    Counts(Vec<Vec<(f64, u64)>>),
    /// A median pass: each column's searches and their tallies.
    Median { passes: Vec<Pass>, n: Vec<u64> },
}

#[derive(Serialize, Deserialize)]
struct Model {
    columns: Vec<String>,
    strategy: Strategy,
    statistics: Vec<f64>,
    counts: Vec<u64>,
}

/// The median searches and the counts of values, per column.
type Carry = (Vec<Search>, Vec<u64>);

struct Imputer;

impl Estimator for Imputer {
    type State = State;
    type Carry = Carry;
    type Model = Model;

    fn begin(_task: &Task, carry: Option<Self::Carry>) -> Result<State> {
        let config = config()?;
        Ok(match carry {
            Some((searches, n)) => State::Median { passes: searches.into_iter().map(Pass::new).collect(), n },
            None if config.strategy == Strategy::MostFrequent => State::Counts(vec![Vec::new(); config.columns.len()]),
            None => State::Sums(vec![Sums::EMPTY; config.columns.len()]),
        })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let config = config()?;
        let columns = config.columns.iter().map(|c| batch.column(c));
        match state {
            State::Sums(sums) => {
                for (x, s) in columns.zip(sums) {
                    let m = x?.summarize()?;
                    *s = Sums::merge(*s, Sums { n: m.count, sum: m.sum, min: m.min, max: m.max });
                }
            }
            State::Counts(counts) => {
                for (x, c) in columns.zip(counts) {
                    // Copied into the guest: no kernel counts distinct values.
                    *c = merge_runs(std::mem::take(c), runs(&x?.read_f64()?));
                }
            }
            State::Median { passes, .. } => {
                for (x, p) in columns.zip(passes) {
                    p.tally_column(&x?)?;
                }
            }
        }
        Ok(())
    }

    fn merge(left: State, right: State) -> Result<State> {
        Ok(match (left, right) {
            (State::Sums(a), State::Sums(b)) => {
                State::Sums(a.into_iter().zip(b).map(|(a, b)| Sums::merge(a, b)).collect())
            }
            (State::Counts(a), State::Counts(b)) => {
                State::Counts(a.into_iter().zip(b).map(|(a, b)| merge_runs(a, b)).collect())
            }
            (State::Median { passes, n }, State::Median { passes: more, .. }) => {
                State::Median { passes: passes.into_iter().zip(more).map(|(a, b)| a.merge(b)).collect(), n }
            }
            _ => wasmpipe_sdk::fail!("cannot merge states of different passes"),
        })
    }

    fn finalize(state: State, pass: u32) -> Result<Outcome<Model, Self::Carry>> {
        let config = config()?;
        let empty = |counts: &[u64]| -> Result<()> {
            if config.strategy != Strategy::Constant
                && let Some((name, _)) = config.columns.iter().zip(counts).find(|(_, n)| **n == 0)
            {
                wasmpipe_sdk::fail!(
                    "column {name:?} has no non-null, non-NaN values to learn a {:?} from",
                    config.strategy
                );
            }
            Ok(())
        };
        let done = |statistics: Vec<f64>, counts: Vec<u64>| {
            Outcome::Done(Model { columns: config.columns.clone(), strategy: config.strategy, statistics, counts })
        };
        match state {
            State::Counts(counts) => {
                let n: Vec<u64> = counts.iter().map(|c| c.iter().map(|r| r.1).sum()).collect();
                empty(&n)?;
                Ok(done(counts.iter().map(|c| mode(c).expect("counted")).collect(), n))
            }
            State::Sums(sums) => {
                let n: Vec<u64> = sums.iter().map(|s| s.n).collect();
                empty(&n)?;
                match config.strategy {
                    Strategy::Mean => Ok(done(sums.iter().map(|s| s.sum / s.n as f64).collect(), n)),
                    Strategy::Constant => Ok(done(vec![config.fill_value.unwrap_or(0.0); sums.len()], n)),
                    _ => {
                        let searches = sums.iter().map(|s| Search::new(median_ranks(s.n), s.n, s.min, s.max)).collect();
                        next_or_done(searches, n.clone(), pass).map(|o| o.map_done(|s| done(s, n)))
                    }
                }
            }
            State::Median { passes, n } => {
                let step = |p: Pass| p.step().map_err(|e| Error::StageFailed(format!("median search: {e}")));
                let searches = passes.into_iter().map(step).collect::<Result<Vec<_>>>()?;
                next_or_done(searches, n.clone(), pass).map(|o| o.map_done(|s| done(s, n)))
            }
        }
    }
}

/// Continue the median searches, or their medians once all are found.
fn next_or_done(searches: Vec<Search>, n: Vec<u64>, pass: u32) -> Result<Outcome<Vec<f64>, Carry>> {
    if searches.iter().all(Search::done) {
        let medians = searches
            .iter()
            .map(|s| {
                let v = s.values().expect("done");
                if v.len() == 1 { v[0] } else { (v[0] + v[1]) / 2.0 }
            })
            .collect();
        wasmpipe_sdk::debug!("medians found after {} passes", pass + 1);
        return Ok(Outcome::Done(medians));
    }
    Ok(Outcome::NextPass((searches, n)))
}

trait MapDone<M, C> {
    fn map_done<N>(self, f: impl FnOnce(M) -> Outcome<N, C>) -> Outcome<N, C>;
}

impl<M, C> MapDone<M, C> for Outcome<M, C> {
    fn map_done<N>(self, f: impl FnOnce(M) -> Outcome<N, C>) -> Outcome<N, C> {
        match self {
            Outcome::Done(m) => f(m),
            Outcome::NextPass(c) => Outcome::NextPass(c),
        }
    }
}

impl Apply for Model {
    fn apply(&self, mut batch: Batch) -> Result<Option<Batch>> {
        for (name, &value) in self.columns.iter().zip(&self.statistics) {
            let filled = batch.column(name)?.fill_null(value)?;
            let nan = filled.is_nan()?;
            let constant: Column = nan.cast(&DataType::Float64)?.mul_scalar(0.0)?.add_scalar(value)?;
            batch = batch.with_column(name, &nan.choose(&constant, &filled)?)?;
        }
        Ok(Some(batch))
    }

    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        let config = config()?;
        wasmpipe_sdk::numeric(input, &config.columns)?;
        Ok(Some(config.columns.iter().fold(input.to_vec(), |s, c| wasmpipe_sdk::with_field(&s, c, DataType::Float64))))
    }
}

wasmpipe_sdk::export_estimator!(Imputer, Model);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_runs_count_every_value_once() {
        let a = runs(&[3.0, 1.0, f64::NAN, 3.0, -0.0]);
        assert_eq!(a, vec![(0.0, 1), (1.0, 1), (3.0, 2)]);
        let b = runs(&[0.0, 2.0, 3.0]);
        assert_eq!(merge_runs(a.clone(), b.clone()), vec![(0.0, 2), (1.0, 1), (2.0, 1), (3.0, 3)]);
        assert_eq!(merge_runs(b, a.clone()), merge_runs(a.clone(), runs(&[0.0, 2.0, 3.0])));
        assert_eq!(merge_runs(Vec::new(), a.clone()), a);
    }

    #[test]
    fn ties_go_to_the_smallest_value() {
        assert_eq!(mode(&[(-1.0, 2), (0.0, 1), (5.0, 2)]), Some(-1.0));
        assert_eq!(mode(&[(-1.0, 2), (0.0, 3), (5.0, 3)]), Some(0.0));
        assert_eq!(mode(&[]), None);
    }

    #[test]
    fn median_ranks_are_the_middle() {
        assert_eq!(median_ranks(1), vec![0]);
        assert_eq!(median_ranks(5), vec![2]);
        assert_eq!(median_ranks(6), vec![2, 3]);
    }
}

//! Quantile bucketizer (estimator): learns `n_buckets` equal-frequency
//! buckets per column and appends `<col>_bucket` (int64, `0 .. buckets`),
//! as scikit-learn's `KBinsDiscretizer(strategy="quantile",
//! encode="ordinal")`.
//!
//! ```toml
//! [stage.bucket.config]
//! columns = ["bmi", "s5"]
//! n_buckets = 5                                # default, as scikit-learn's n_bins
//! quantile_method = "averaged_inverted_cdf"    # default (scikit-learn >= 1.9's); or "linear" (numpy's default)
//! ```
//!
//! # Math
//!
//! The edges are numpy's percentiles of the column at the levels
//! `linspace(0, 100, n_buckets + 1)`, by the chosen method, computed as
//! numpy computes them: the virtual index `n q - 1` (averaged inverted
//! CDF; the average of the two neighbours where it is an integer, else the
//! upper one) or `(n - 1) q` (linear interpolation), and numpy's `_lerp`.
//! The first edge is the minimum, the last the maximum. As scikit-learn
//! does, an edge within 1e-8 of the one before it is removed (with a
//! warning), leaving fewer buckets. A value's bucket is the number of inner
//! edges at or below it (`searchsorted(..., side="right")`): values below
//! the minimum go to bucket 0, above the maximum to the last bucket.
//!
//! The percentiles come from exact order statistics, not a sketch: the
//! shared `quantiles` crate finds the values at the needed ranks in passes
//! (pass 0: count, min and max by `summarize`; pass 1 collects the values
//! when there are at most 65,536, else narrows a window around each rank
//! with merged 1024-bin histograms, a pass per factor of ~340; see that
//! crate). So the rank error is zero: the edges equal scikit-learn's to
//! the last bit up to the rounding of the level arithmetic, and the
//! buckets agree row for row.
//!
//! Nulls and NaN are skipped when fitting and get a null bucket. A column
//! with no values fails the fit, naming it.
//!
//! # Where it runs
//!
//! Fit: `summarize`, `compare`, `and`, `histogram` kernels, and the
//! collected window values copied into the guest (at most 65,536 per
//! window). Transform: `compare`, `cast`, `add` kernels, one mask per inner
//! edge; nothing is copied into the sandbox.
//!
//! # Model
//!
//! JSON: `columns`, `edges` (per column, scikit-learn's `bin_edges_`),
//! `n_buckets` (per column, after removing narrow buckets), `counts`.

use quantiles::{Extent, Pass, Search};
use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Apply, Batch, Compare, DataType, Error, Estimator, Field, Outcome, Result, Schema, Task};

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "snake_case")]
enum Method {
    AveragedInvertedCdf,
    Linear,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    columns: Vec<String>,
    #[serde(default = "five")]
    n_buckets: u32,
    #[serde(default = "averaged")]
    quantile_method: Method,
}

fn five() -> u32 {
    5
}

fn averaged() -> Method {
    Method::AveragedInvertedCdf
}

fn config() -> Result<Config> {
    let config: Config = wasmpipe_sdk::config()?;
    if config.columns.is_empty() {
        return Err(Error::InvalidConfig("columns: name at least one column".into()));
    }
    if !(2..=1000).contains(&config.n_buckets) {
        return Err(Error::InvalidConfig(format!("n_buckets: 2 to 1000, got {}", config.n_buckets)));
    }
    Ok(config)
}

/// numpy's percentile of `n` sorted values at `level` (0..=100): the two
/// ranks to read and how to combine them (`_lerp` weight).
fn percentile_plan(method: Method, n: u64, level: f64) -> (u64, u64, f64) {
    let q = level / 100.0;
    let nf = n as f64;
    let virtual_index = match method {
        Method::Linear => (nf - 1.0) * q,
        Method::AveragedInvertedCdf => nf * q - 1.0,
    };
    if virtual_index < 0.0 {
        return (0, 0, 0.0);
    }
    if virtual_index >= nf - 1.0 {
        return (n - 1, n - 1, 0.0);
    }
    let previous = virtual_index.floor();
    let gamma = virtual_index - previous;
    let gamma = match method {
        Method::Linear => gamma,
        Method::AveragedInvertedCdf => {
            if gamma == 0.0 {
                0.5
            } else {
                1.0
            }
        }
    };
    (previous as u64, previous as u64 + 1, gamma)
}

/// numpy's `_lerp(a, b, t)`.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 { b - diff * (1.0 - t) } else { a + diff * t }
}

/// numpy's `linspace(0, 100, buckets + 1)`.
fn levels(buckets: u32) -> Vec<f64> {
    let step = 100.0 / buckets as f64;
    let mut l: Vec<f64> = (0..=buckets).map(|k| k as f64 * step).collect();
    *l.last_mut().expect("levels") = 100.0;
    l
}

/// The edges from the values at the planned ranks, narrow buckets removed.
fn edges(plans: &[(u64, u64, f64)], ranks: &[u64], values: &[f64]) -> Vec<f64> {
    let at = |r: u64| values[ranks.iter().position(|&x| x == r).expect("rank searched")];
    let all: Vec<f64> = plans.iter().map(|&(a, b, t)| lerp(at(a), at(b), t)).collect();
    // scikit-learn: keep an edge more than 1e-8 above its predecessor.
    all.iter().enumerate().filter(|(i, e)| *i == 0 || **e - all[i - 1] > 1e-8).map(|(_, e)| *e).collect()
}

#[derive(Serialize, Deserialize)]
enum State {
    Extents(Vec<Extent>),
    Search { passes: Vec<Pass>, n: Vec<u64> },
}

#[derive(Serialize, Deserialize)]
struct Model {
    columns: Vec<String>,
    edges: Vec<Vec<f64>>,
    n_buckets: Vec<usize>,
    counts: Vec<u64>,
}

struct Bucketizer;

impl Estimator for Bucketizer {
    type State = State;
    type Carry = (Vec<Search>, Vec<u64>);
    type Model = Model;

    fn begin(_task: &Task, carry: Option<Self::Carry>) -> Result<State> {
        let config = config()?;
        Ok(match carry {
            Some((searches, n)) => State::Search { passes: searches.into_iter().map(Pass::new).collect(), n },
            None => State::Extents(vec![Extent::default(); config.columns.len()]),
        })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let config = config()?;
        let columns = config.columns.iter().map(|c| batch.column(c));
        match state {
            State::Extents(extents) => {
                for (x, e) in columns.zip(extents) {
                    let s = x?.summarize()?;
                    e.add(s.count, s.min, s.max);
                }
            }
            State::Search { passes, .. } => {
                for (x, p) in columns.zip(passes) {
                    p.tally_column(&x?)?;
                }
            }
        }
        Ok(())
    }

    fn merge(left: State, right: State) -> Result<State> {
        Ok(match (left, right) {
            (State::Extents(a), State::Extents(b)) => {
                State::Extents(a.into_iter().zip(b).map(|(a, b)| a.merge(b)).collect())
            }
            (State::Search { passes, n }, State::Search { passes: more, .. }) => {
                State::Search { passes: passes.into_iter().zip(more).map(|(a, b)| a.merge(b)).collect(), n }
            }
            _ => wasmpipe_sdk::fail!("cannot merge states of different passes"),
        })
    }

    fn finalize(state: State, pass: u32) -> Result<Outcome<Model, Self::Carry>> {
        let config = config()?;
        let plans = |n: u64| -> Vec<(u64, u64, f64)> {
            levels(config.n_buckets).iter().map(|&l| percentile_plan(config.quantile_method, n, l)).collect()
        };
        let ranks = |n: u64| -> Vec<u64> {
            let mut r: Vec<u64> = plans(n).iter().flat_map(|&(a, b, _)| [a, b]).collect();
            r.sort_unstable();
            r.dedup();
            r
        };
        let (searches, n) = match state {
            State::Extents(extents) => {
                if let Some((name, _)) = config.columns.iter().zip(&extents).find(|(_, e)| e.n == 0) {
                    wasmpipe_sdk::fail!("column {name:?} has no non-null, non-NaN values to bucketize");
                }
                let searches = extents.iter().map(|e| e.search(ranks(e.n))).collect();
                (searches, extents.iter().map(|e| e.n).collect::<Vec<_>>())
            }
            State::Search { passes, n } => {
                let step = |p: Pass| p.step().map_err(|e| Error::StageFailed(format!("quantile search: {e}")));
                (passes.into_iter().map(step).collect::<Result<Vec<_>>>()?, n)
            }
        };
        if !searches.iter().all(Search::done) {
            return Ok(Outcome::NextPass((searches, n)));
        }
        let mut all = Vec::new();
        for ((name, s), &count) in config.columns.iter().zip(&searches).zip(&n) {
            let e = edges(&plans(count), &s.ranks, &s.values().expect("done"));
            if e.len() - 1 < config.n_buckets as usize {
                wasmpipe_sdk::warn!("{name}: buckets narrower than 1e-8 removed, {} left", e.len() - 1);
            }
            all.push(e);
        }
        wasmpipe_sdk::debug!("edges found in {} passes", pass + 1);
        let n_buckets = all.iter().map(|e| e.len() - 1).collect();
        Ok(Outcome::Done(Model { columns: config.columns, edges: all, n_buckets, counts: n }))
    }
}

impl Apply for Model {
    fn apply(&self, mut batch: Batch) -> Result<Option<Batch>> {
        for (name, edges) in self.columns.iter().zip(&self.edges) {
            let x = batch.column(name)?;
            // 0 where x is a number (inf included), NaN where NaN, null where null.
            let mut bucket = x.clamp(-f64::MAX, f64::MAX)?.mul_scalar(0.0)?;
            for e in &edges[1..edges.len() - 1] {
                bucket = bucket.add(&x.compare(Compare::Ge, *e)?.cast(&DataType::Float64)?)?;
            }
            batch = batch.with_column(&format!("{name}_bucket"), &bucket.cast(&DataType::Int64)?)?;
        }
        Ok(Some(batch))
    }

    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        let config = config()?;
        wasmpipe_sdk::numeric(input, &config.columns)?;
        Ok(Some(
            config
                .columns
                .iter()
                .fold(input.to_vec(), |s, c| wasmpipe_sdk::with_field(&s, &format!("{c}_bucket"), DataType::Int64)),
        ))
    }
}

wasmpipe_sdk::export_estimator!(Bucketizer, Model);

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy's percentile of `sorted` values, by the plan.
    fn percentile(method: Method, sorted: &[f64], level: f64) -> f64 {
        let (a, b, t) = percentile_plan(method, sorted.len() as u64, level);
        lerp(sorted[a as usize], sorted[b as usize], t)
    }

    #[test]
    fn percentiles_match_numpy() {
        let x = [1.0, 2.0, 4.0, 8.0, 16.0];
        // np.percentile(x, [0, 25, 50, 60, 100]) and method="averaged_inverted_cdf".
        let linear: Vec<f64> =
            [0.0, 25.0, 50.0, 60.0, 100.0].iter().map(|&l| percentile(Method::Linear, &x, l)).collect();
        assert_eq!(linear, vec![1.0, 2.0, 4.0, 5.6, 16.0]);
        let averaged: Vec<f64> = [0.0, 20.0, 25.0, 40.0, 50.0, 100.0]
            .iter()
            .map(|&l| percentile(Method::AveragedInvertedCdf, &x, l))
            .collect();
        assert_eq!(averaged, vec![1.0, 1.5, 2.0, 3.0, 4.0, 16.0]);
    }

    #[test]
    fn narrow_buckets_are_removed_like_scikit_learn() {
        let plans = [(0, 0, 0.0), (1, 1, 0.0), (2, 2, 0.0), (3, 3, 0.0)];
        assert_eq!(edges(&plans, &[0, 1, 2, 3], &[0.0, 1.0, 1.0 + 1e-9, 2.0]), vec![0.0, 1.0, 2.0]);
    }

    #[test]
    fn levels_are_numpy_linspace() {
        assert_eq!(levels(4), vec![0.0, 25.0, 50.0, 75.0, 100.0]);
        assert_eq!(levels(3)[1], 100.0 / 3.0);
    }
}

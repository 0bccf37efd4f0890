//! k-means clustering (estimator) by Lloyd's iterations. Transform appends
//! `cluster` (int64, the index of the nearest centroid) and `distance`
//! (float64, the Euclidean distance to it).
//!
//! ```toml
//! [stage.cluster.config]
//! features = ["sepal_length", "petal_length"]
//! k = 3                      # required unless `centroids` are given
//! init = "first"             # default: the first k distinct rows
//! # centroids = [[5.0, 1.5], [6.0, 4.5], [6.5, 5.5]]   # or explicit starting centroids (then no `init`)
//! max_iter = 100             # default; most fit passes in all, the `init = "first"` pass included
//! tol = 0.0                  # default; stop once no centroid moves more than this
//! ```
//!
//! # Math
//!
//! Each pass assigns every row to its nearest centroid (squared Euclidean
//! distance; the first of equally near centroids, as scikit-learn's
//! `argmin`), and each partition sums, per centroid, the rows assigned to it
//! and their number, and the squared distances of all rows (the inertia).
//! The sums merge by addition, in partition order. Finalize moves each
//! centroid to the mean of its rows; a centroid with no rows stays where it
//! is (with a warning; scikit-learn relocates it instead). The fit has
//! converged when no centroid moved more than `tol` (Euclidean); with the
//! default `tol = 0` that is when the assignment no longer changes. After
//! `max_iter` passes the stage stops with a warning.
//!
//! `init = "first"` takes the first k distinct rows of the data in
//! partition order: each partition collects its own first k distinct rows
//! in an extra pass, and the merge keeps the first k distinct of them. That
//! is the first k distinct rows of partition 0 whenever partition 0 has k
//! of them, and never depends on how the input is partitioned.
//!
//! Distances are computed as `sum_f (x_f - c_f)^2`, not through the
//! `|x|^2 - 2 x.c + |c|^2` expansion, so they lose no precision to
//! cancellation. Rows with a null or non-finite feature are skipped when
//! fitting; in transform they get a null cluster and a null or NaN distance.
//!
//! # Where the work runs
//!
//! On native host kernels: the row filter, the distances (`arith-scalar`,
//! `arith-columns`: three kernel calls per centroid and feature), the
//! nearest centroid (`compare-columns`, `if-then-else`), the per-centroid
//! sums (`compare`, `summarize`, `dot` of each feature with the centroid's
//! mask) and the inertia (`summarize`). Copied into the guest: only with
//! `init = "first"`, the features of each partition's first batches, until
//! it has k distinct rows.
//!
//! # Model
//!
//! JSON: `features`, `centroids` (k rows of `features.len()`), `inertia`
//! (the sum of squared distances of the rows to their nearest centroid in
//! the last pass; with `tol = 0` these are the final centroids), `sizes`
//! (rows per centroid in the last pass), `rows`, `passes` and `converged`.

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Batch, Column, Compare, DataType, Error, Estimator, Outcome, Predictor, Result, Task, Unary};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    features: Vec<String>,
    k: Option<usize>,
    init: Option<String>,
    centroids: Option<Vec<Vec<f64>>>,
    #[serde(default = "default_max_iter")]
    max_iter: u32,
    #[serde(default)]
    tol: f64,
}

fn default_max_iter() -> u32 {
    100
}

/// The config, checked: `(config, k)`.
fn config() -> Result<(Config, usize)> {
    let config: Config = wasmpipe_sdk::config()?;
    let invalid = |m: String| Err(Error::InvalidConfig(m));
    let d = config.features.len();
    if d == 0 {
        return invalid("features: name at least one column".into());
    }
    if let Some(init) = &config.init
        && init != "first"
    {
        return invalid(format!("init: the only method is \"first\", got {init:?} (or give `centroids`)"));
    }
    let k = match (&config.centroids, config.k) {
        (Some(_), _) if config.init.is_some() => return invalid("give `init` or `centroids`, not both".into()),
        (Some(c), k) => {
            if c.is_empty() || k.is_some_and(|k| k != c.len()) {
                return invalid(format!("centroids: {} given but k = {}", c.len(), k.unwrap_or(0)));
            }
            if let Some(row) = c.iter().find(|row| row.len() != d || row.iter().any(|v| !v.is_finite())) {
                return invalid(format!("centroids: {row:?} is not {d} finite numbers, one per feature"));
            }
            c.len()
        }
        (None, Some(k)) if k > 0 => k,
        (None, _) => return invalid("k: give the number of clusters (at least 1), or `centroids`".into()),
    };
    if config.max_iter < 1 {
        return invalid("max_iter: must be at least 1".into());
    }
    if config.tol.is_nan() || config.tol < 0.0 {
        return invalid(format!("tol: must be at least 0, got {}", config.tol));
    }
    Ok((config, k))
}

/// The rows of `batch` whose features are all finite.
fn usable(batch: &Batch, features: &[String]) -> Result<Batch> {
    let mut keep: Option<Column> = None;
    for name in features {
        let x = batch.column(name)?;
        let finite = x.compare(Compare::Gt, f64::NEG_INFINITY)?.and(&x.compare(Compare::Lt, f64::INFINITY)?)?;
        keep = Some(match keep {
            None => finite,
            Some(k) => k.and(&finite)?,
        });
    }
    batch.filter(&keep.expect("at least one feature"))
}

/// The named columns of `batch`, as handles.
fn columns(batch: &Batch, names: &[String]) -> Result<Vec<Column>> {
    names.iter().map(|n| batch.column(n)).collect()
}

/// `sum_f (x_f - c_f)^2`, row by row.
fn squared_distance(x: &[Column], centroid: &[f64]) -> Result<Column> {
    let mut total: Option<Column> = None;
    for (xf, cf) in x.iter().zip(centroid) {
        let diff = xf.sub_scalar(*cf)?;
        let square = diff.mul(&diff)?;
        total = Some(match total {
            None => square,
            Some(t) => t.add(&square)?,
        });
    }
    Ok(total.expect("at least one feature"))
}

/// The squared distance to the nearest centroid and its index (float64),
/// the first of equally near ones; both NaN (or null) where a feature is.
fn nearest(x: &[Column], centroids: &[Vec<f64>]) -> Result<(Column, Column)> {
    let first = squared_distance(x, &centroids[0])?;
    // Zero where the distance is a number (even an overflowed one), NaN or null where it is.
    let zero = first.clamp(0.0, f64::MAX)?.mul_scalar(0.0)?;
    let (mut best, mut index) = (first, zero.add_scalar(0.0)?);
    for (j, c) in centroids.iter().enumerate().skip(1) {
        let d = squared_distance(x, c)?;
        let closer = d.compare_column(Compare::Lt, &best)?;
        index = closer.choose(&zero.add_scalar(j as f64)?, &index)?;
        best = closer.choose(&d, &best)?;
    }
    Ok((best, index))
}

/// One partition's partial state.
#[derive(Serialize, Deserialize)]
enum State {
    /// `init = "first"`: the first distinct rows seen, at most k.
    First { k: usize, rows: Vec<Vec<f64>> },
    /// A Lloyd pass from `centroids`: per centroid, the sums of its rows'
    /// features and their number; the squared distances' sum.
    Lloyd { centroids: Vec<Vec<f64>>, rows: u64, sizes: Vec<u64>, sums: Vec<Vec<f64>>, inertia: f64 },
}

#[derive(Serialize, Deserialize)]
struct Model {
    features: Vec<String>,
    centroids: Vec<Vec<f64>>,
    inertia: f64,
    sizes: Vec<u64>,
    rows: u64,
    passes: u32,
    converged: bool,
}

/// Append the rows of `more` not yet in `rows`, in order, until there are `k`.
fn add_distinct(rows: &mut Vec<Vec<f64>>, more: impl IntoIterator<Item = Vec<f64>>, k: usize) {
    for row in more {
        if rows.len() >= k {
            break;
        }
        if !rows.contains(&row) {
            rows.push(row);
        }
    }
}

/// The centroids moved to the means of their rows (those with none stay),
/// and the largest distance a centroid moved.
fn move_centroids(centroids: &[Vec<f64>], sums: &[Vec<f64>], sizes: &[u64]) -> (Vec<Vec<f64>>, f64) {
    let mut shift = 0.0f64;
    let next = centroids
        .iter()
        .zip(sums.iter().zip(sizes))
        .map(|(old, (sum, &n))| {
            if n == 0 {
                return old.clone();
            }
            let new: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
            let moved = old.iter().zip(&new).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
            shift = shift.max(moved);
            new
        })
        .collect();
    (next, shift)
}

fn lloyd(centroids: Vec<Vec<f64>>) -> State {
    let (k, d) = (centroids.len(), centroids[0].len());
    State::Lloyd { centroids, rows: 0, sizes: vec![0; k], sums: vec![vec![0.0; d]; k], inertia: 0.0 }
}

struct KMeans;

impl Estimator for KMeans {
    type State = State;
    type Carry = Vec<Vec<f64>>;
    type Model = Model;

    fn begin(_task: &Task, carry: Option<Vec<Vec<f64>>>) -> Result<State> {
        let (config, k) = config()?;
        Ok(match (carry, config.centroids) {
            (Some(centroids), _) | (None, Some(centroids)) => lloyd(centroids),
            (None, None) => State::First { k, rows: Vec::new() },
        })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let (config, _) = config()?;
        match state {
            State::First { k, rows } => {
                if rows.len() >= *k {
                    return Ok(());
                }
                // Copy this batch's features in, until k distinct rows are found.
                let batch = usable(batch, &config.features)?;
                let values =
                    columns(&batch, &config.features)?.iter().map(|c| c.read_f64()).collect::<Result<Vec<_>>>()?;
                let n = batch.num_rows() as usize;
                add_distinct(rows, (0..n).map(|i| values.iter().map(|col| col[i]).collect()), *k);
            }
            State::Lloyd { centroids, rows, sizes, sums, inertia } => {
                let batch = usable(batch, &config.features)?;
                if batch.num_rows() == 0 {
                    return Ok(());
                }
                *rows += batch.num_rows();
                let x = columns(&batch, &config.features)?;
                let (best, index) = nearest(&x, centroids)?;
                *inertia += best.summarize()?.sum;
                for (j, (size, sum)) in sizes.iter_mut().zip(sums.iter_mut()).enumerate() {
                    let mine = index.compare(Compare::Eq, j as f64)?;
                    let n = mine.summarize()?.sum as u64;
                    if n == 0 {
                        continue;
                    }
                    *size += n;
                    for (s, xf) in sum.iter_mut().zip(&x) {
                        *s += xf.dot(&mine)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn merge(left: State, right: State) -> Result<State> {
        Ok(match (left, right) {
            (State::First { k, mut rows }, State::First { rows: more, .. }) => {
                add_distinct(&mut rows, more, k);
                State::First { k, rows }
            }
            (
                State::Lloyd { centroids, rows, mut sizes, mut sums, inertia },
                State::Lloyd { rows: r, sizes: z, sums: s, inertia: i, .. },
            ) => {
                sizes.iter_mut().zip(z).for_each(|(a, b)| *a += b);
                for (a, b) in sums.iter_mut().zip(s) {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                }
                State::Lloyd { centroids, rows: rows + r, sizes, sums, inertia: inertia + i }
            }
            _ => wasmpipe_sdk::fail!("cannot merge states of different passes"),
        })
    }

    fn finalize(state: State, pass: u32) -> Result<Outcome<Model, Vec<Vec<f64>>>> {
        let (config, _) = config()?;
        match state {
            State::First { k, rows } => {
                if rows.len() < k {
                    wasmpipe_sdk::fail!("k = {k} but the data has only {} distinct usable rows", rows.len());
                }
                Ok(Outcome::NextPass(rows))
            }
            State::Lloyd { centroids, rows, sizes, sums, inertia } => {
                if rows == 0 {
                    wasmpipe_sdk::fail!("no usable rows to cluster");
                }
                let empty = sizes.iter().filter(|&&n| n == 0).count();
                if empty > 0 {
                    wasmpipe_sdk::warn!("pass {pass}: {empty} centroid(s) have no rows and stay where they are");
                }
                let (next, shift) = move_centroids(&centroids, &sums, &sizes);
                wasmpipe_sdk::debug!("pass {pass}: inertia {inertia}, largest move {shift}");
                let converged = shift <= config.tol;
                if !converged && pass + 1 < config.max_iter {
                    return Ok(Outcome::NextPass(next));
                }
                if converged {
                    wasmpipe_sdk::info!("converged in {} passes on {rows} rows, inertia {inertia:.6}", pass + 1);
                } else {
                    wasmpipe_sdk::warn!("stopped after max_iter = {} passes; the last move was {shift}", pass + 1);
                }
                let model = Model {
                    features: config.features,
                    centroids: next,
                    inertia,
                    sizes,
                    rows,
                    passes: pass + 1,
                    converged,
                };
                Ok(Outcome::Done(model))
            }
        }
    }
}

struct Assign(Model);

impl Predictor for Assign {
    type Model = Model;

    fn open(_task: &Task, model: Model) -> Result<Self> {
        Ok(Assign(model))
    }

    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
        let x = columns(&batch, &self.0.features)?;
        let (best, index) = nearest(&x, &self.0.centroids)?;
        // NaN indices (a NaN feature) become null.
        let cluster = index.cast(&DataType::Int64)?;
        let out = batch.with_column("cluster", &cluster)?;
        Ok(Some(out.with_column("distance", &best.map(Unary::Sqrt)?)?))
    }
}

wasmpipe_sdk::export_estimator!(KMeans, Assign);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_rows_keep_their_order_and_stop_at_k() {
        let mut rows = vec![vec![1.0, 2.0]];
        add_distinct(&mut rows, [vec![1.0, 2.0], vec![0.0, 0.0], vec![-0.0, 0.0], vec![3.0, 1.0], vec![4.0, 4.0]], 3);
        assert_eq!(rows, vec![vec![1.0, 2.0], vec![0.0, 0.0], vec![3.0, 1.0]]);
    }

    #[test]
    fn merged_first_rows_do_not_depend_on_partitioning() {
        let data: Vec<Vec<f64>> = [1.0, 1.0, 2.0, 1.0, 3.0, 2.0, 4.0].iter().map(|&v| vec![v]).collect();
        let whole = {
            let mut rows = Vec::new();
            add_distinct(&mut rows, data.clone(), 3);
            rows
        };
        for size in 1..data.len() {
            let mut merged = Vec::new();
            for chunk in data.chunks(size) {
                let mut part = Vec::new();
                add_distinct(&mut part, chunk.to_vec(), 3);
                add_distinct(&mut merged, part, 3);
            }
            assert_eq!(merged, whole, "chunks of {size}");
        }
    }

    #[test]
    fn centroids_move_to_their_means_and_empty_ones_stay() {
        let old = vec![vec![0.0, 0.0], vec![10.0, 10.0]];
        let (next, shift) = move_centroids(&old, &[vec![3.0, 4.0], vec![0.0, 0.0]], &[1, 0]);
        assert_eq!(next, vec![vec![3.0, 4.0], vec![10.0, 10.0]]);
        assert_eq!(shift, 5.0);
        let (same, none) = move_centroids(&next, &[vec![6.0, 8.0], vec![10.0, 10.0]], &[2, 1]);
        assert_eq!((same, none), (next, 0.0));
    }
}

//! k-means clustering (estimator) by Lloyd's iterations. Transform appends
//! `cluster` (int64, the index of the nearest centroid) and `distance`
//! (float64, the Euclidean distance to it).
//!
//! ```toml
//! [stage.cluster.config]
//! features = ["sepal_length", "petal_length"]
//! k = 3                      # required unless `centroids` are given
//! init = "first"             # default: the first k distinct rows; or "k-means++"
//! seed = 0                   # default; k-means++ only: its random draws
//! # centroids = [[5.0, 1.5], [6.0, 4.5], [6.5, 5.5]]   # or explicit starting centroids (then no `init`)
//! max_iter = 100             # default; most fit passes in all, init passes included (then at least one Lloyd pass)
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
//! `init = "k-means++"` is the seeding of Arthur and Vassilvitskii (2007),
//! in k passes: the first center is a row drawn uniformly at random, and
//! each next one a row drawn with probability proportional to D(x)^2, its
//! squared distance to the nearest center chosen so far. This is plain
//! k-means++, one candidate per step, not scikit-learn's greedy variant
//! (which draws `2 + ln k` candidates per step and keeps the one that
//! lowers the inertia most): cheaper per center, and more often ends in a
//! worse local optimum, so try a few seeds. Rows already chosen
//! (D(x) = 0) are never drawn again; fewer than k distinct rows fail the
//! fit. Seeding pass `j` computes the distances to `j` centers: the k
//! passes cost as much as (k-1)/2 Lloyd passes.
//!
//! Each draw is a weighted sample that needs no coordination between
//! partitions (Efraimidis and Spirakis' exponential clocks): every row gets
//! `u`, uniform in (0, 1), from the xxh3 hash of its features seeded with
//! `splitmix64(seed + step * 0x9e3779b97f4a7c15)`, and the draw is the row
//! with the smallest clock `-ln(u) / D(x)^2` (of independent exponential
//! clocks with rates `w_i`, row `i` rings first with probability
//! `w_i / sum w`). Each partition keeps its earliest row, the merge keeps
//! the earlier of two, equal clocks going to the smaller row
//! (lexicographically, by `f64::total_cmp`). The clocks depend only on the
//! seed, the step and the rows' values, so the centers are the same rows at
//! any partitioning or parallelism, and the same seed gives the same
//! centers on every run. The features are hashed rounded to f32, so that
//! last-bit noise from upstream (a scaler whose statistics merge in another
//! order at another partitioning) practically never changes the draw.
//! Clocks are compared as `ln(-ln u) - ln D(x)^2`, which orders them the
//! same and stays finite. One caveat: identical rows share their clock, so
//! a row repeated m times is drawn as one row, not with m times the weight
//! (a row index that would tell the copies apart depends on partitioning);
//! rows equal in f32 share `u` too.
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
//! mask) and the inertia (`summarize`); for k-means++ also the row hashes
//! (`hash-rows`). Copied into the guest: with `init = "first"`, the
//! features of each partition's first batches, until it has k distinct
//! rows; with `init = "k-means++"`, in each seeding pass every row's hash
//! and D(x)^2 (two numbers per row, for the clocks), and the features of
//! each batch's earliest row.
//!
//! # Model
//!
//! JSON: `features`, `centroids` (k rows of `features.len()`),
//! `initial_centroids` (where the Lloyd passes started: the first rows, the
//! k-means++ centers or the given centroids), `inertia` (the sum of
//! squared distances of the rows to their nearest centroid in the last
//! pass; with `tol = 0` these are the final centroids), `sizes` (rows per
//! centroid in the last pass), `rows`, `passes` (init passes included) and
//! `converged`. The stage's report is the same but for the centroids:
//! `rows`, `inertia`, `sizes`, `passes`, `converged` (a run report plots
//! the cluster sizes).

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Apply, Batch, Column, Compare, DataType, Error, Estimator, Outcome, Result, Task, Unary};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    features: Vec<String>,
    k: Option<usize>,
    init: Option<String>,
    seed: Option<u64>,
    centroids: Option<Vec<Vec<f64>>>,
    #[serde(default = "default_max_iter")]
    max_iter: u32,
    #[serde(default)]
    tol: f64,
}

fn default_max_iter() -> u32 {
    100
}

/// The `init` that seeds by k-means++.
const KMEANS_PP: &str = "k-means++";

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
        && init != KMEANS_PP
    {
        return invalid(format!("init: \"first\" or \"{KMEANS_PP}\", got {init:?} (or give `centroids`)"));
    }
    if config.seed.is_some() && config.init.as_deref() != Some(KMEANS_PP) {
        return invalid(format!("seed: only used with init = \"{KMEANS_PP}\""));
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

/// A row drawn by k-means++ and its clock (smaller is earlier).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Pick {
    clock: f64,
    row: Vec<f64>,
}

/// One partition's partial state.
#[derive(Serialize, Deserialize)]
enum State {
    /// `init = "first"`: the first distinct rows seen, at most k.
    First { k: usize, rows: Vec<Vec<f64>> },
    /// A k-means++ seeding pass: the centers chosen so far (fewer than k)
    /// and the earliest row seen for the next one.
    Seed { centers: Vec<Vec<f64>>, best: Option<Pick> },
    /// A Lloyd pass from `centroids` (the first one from `initial`): per
    /// centroid, the sums of its rows' features and their number; the
    /// squared distances' sum.
    Lloyd {
        initial: Vec<Vec<f64>>,
        centroids: Vec<Vec<f64>>,
        rows: u64,
        sizes: Vec<u64>,
        sums: Vec<Vec<f64>>,
        inertia: f64,
    },
}

/// What a pass hands the next.
#[derive(Serialize, Deserialize)]
enum Carry {
    /// k-means++: the centers chosen so far, fewer than k.
    Seeding(Vec<Vec<f64>>),
    /// Lloyd: the centroids to assign to, and where the first pass started.
    Lloyd { initial: Vec<Vec<f64>>, centroids: Vec<Vec<f64>> },
}

#[derive(Serialize, Deserialize)]
struct Model {
    features: Vec<String>,
    centroids: Vec<Vec<f64>>,
    initial_centroids: Vec<Vec<f64>>,
    inertia: f64,
    sizes: Vec<u64>,
    rows: u64,
    passes: u32,
    converged: bool,
}

/// The stage's report: the model without its centroids.
#[derive(Serialize)]
struct Report<'a> {
    rows: u64,
    inertia: f64,
    sizes: &'a [u64],
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

fn lloyd(initial: Vec<Vec<f64>>, centroids: Vec<Vec<f64>>) -> State {
    let (k, d) = (centroids.len(), centroids[0].len());
    State::Lloyd { initial, centroids, rows: 0, sizes: vec![0; k], sums: vec![vec![0.0; d]; k], inertia: 0.0 }
}

/// The hash seed of k-means++ step `step` (the number of centers chosen):
/// splitmix64 of `seed + step * golden ratio`, so every step draws afresh.
fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed.wrapping_add((step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A row's clock `ln(-ln u) - ln w` (the log of the exponential clock
/// `-ln(u) / w`: same order, always finite) for `u`, the row's hash over
/// 2^64, and the weight `w > 0`. `u` is kept inside (0, 1), so `-ln u` is
/// in [1.1e-16, 708]; `w` is capped at `f64::MAX`.
fn clock(u: f64, w: f64) -> f64 {
    let u = u.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON / 2.0);
    (-u.ln()).ln() - w.min(f64::MAX).ln()
}

/// The earliest clock among the rows (uniforms `u`) of weight above zero
/// (all weights 1 when `weights` is `None`), and the rows that have it;
/// `None` when no row has a weight above zero.
fn earliest(u: &[f64], weights: Option<&[f64]>) -> Option<(f64, Vec<usize>)> {
    let mut best: Option<(f64, Vec<usize>)> = None;
    for (i, &ui) in u.iter().enumerate() {
        let w = weights.map_or(1.0, |w| w[i]);
        if w.is_nan() || w <= 0.0 {
            continue;
        }
        let c = clock(ui, w);
        match &mut best {
            Some((b, rows)) if c == *b => rows.push(i),
            Some((b, _)) if c > *b => {}
            _ => best = Some((c, vec![i])),
        }
    }
    best
}

/// The earlier of two picks: the smaller clock, then the smaller row
/// (lexicographically, by `total_cmp`). Associative and commutative, so the
/// merged pick does not depend on partitioning or merge order.
fn earlier(a: Option<Pick>, b: Option<Pick>) -> Option<Pick> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let order = a.clock.total_cmp(&b.clock).then_with(|| {
                a.row
                    .iter()
                    .zip(&b.row)
                    .map(|(x, y)| x.total_cmp(y))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            Some(if order.is_le() { a } else { b })
        }
        (a, None) => a,
        (None, b) => b,
    }
}

struct KMeans;

impl Estimator for KMeans {
    type State = State;
    type Carry = Carry;
    type Model = Model;

    fn begin(_task: &Task, carry: Option<Carry>) -> Result<State> {
        let (config, k) = config()?;
        Ok(match (carry, config.centroids) {
            (Some(Carry::Lloyd { initial, centroids }), _) => lloyd(initial, centroids),
            (Some(Carry::Seeding(centers)), _) => State::Seed { centers, best: None },
            (None, Some(centroids)) => lloyd(centroids.clone(), centroids),
            (None, None) if config.init.as_deref() == Some(KMEANS_PP) => {
                State::Seed { centers: Vec::new(), best: None }
            }
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
            State::Seed { centers, best } => {
                let batch = usable(batch, &config.features)?;
                let n = batch.num_rows() as usize;
                if n == 0 {
                    return Ok(());
                }
                let x = columns(&batch, &config.features)?;
                let seed = step_seed(config.seed.unwrap_or(0), centers.len());
                // The hash of the features rounded to f32, so that last-bit differences
                // upstream (a scaler's statistics merged in another order) draw the same.
                let rounded = x.iter().map(|c| c.cast(&DataType::Float32)).collect::<Result<Vec<_>>>()?;
                let hash = wasmpipe_sdk::hash_rows(&rounded.iter().collect::<Vec<_>>(), seed)?;
                let u = hash.mul_scalar(2f64.powi(-64))?.read_f64()?;
                // Pass 0 draws uniformly; later ones by D(x)^2.
                let weights = if centers.is_empty() { None } else { Some(nearest(&x, centers)?.0.read_f64()?) };
                let Some((clock, tied)) = earliest(&u, weights.as_deref()) else {
                    return Ok(());
                };
                // Copy in the earliest row's features (more than one only on a tie).
                let mut mask = vec![false; n];
                tied.iter().for_each(|&i| mask[i] = true);
                let chosen = batch.filter_rows(&mask)?;
                let values =
                    columns(&chosen, &config.features)?.iter().map(|c| c.read_f64()).collect::<Result<Vec<_>>>()?;
                for i in 0..tied.len() {
                    let row = values.iter().map(|col| col[i]).collect();
                    *best = earlier(best.take(), Some(Pick { clock, row }));
                }
            }
            State::Lloyd { centroids, rows, sizes, sums, inertia, .. } => {
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
            (State::Seed { centers, best }, State::Seed { best: other, .. }) => {
                State::Seed { centers, best: earlier(best, other) }
            }
            (
                State::Lloyd { initial, centroids, rows, mut sizes, mut sums, inertia },
                State::Lloyd { rows: r, sizes: z, sums: s, inertia: i, .. },
            ) => {
                sizes.iter_mut().zip(z).for_each(|(a, b)| *a += b);
                for (a, b) in sums.iter_mut().zip(s) {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                }
                State::Lloyd { initial, centroids, rows: rows + r, sizes, sums, inertia: inertia + i }
            }
            _ => wasmpipe_sdk::fail!("cannot merge states of different passes"),
        })
    }

    fn finalize(state: State, pass: u32) -> Result<Outcome<Model, Carry>> {
        let (config, k) = config()?;
        match state {
            State::First { k, rows } => {
                if rows.len() < k {
                    wasmpipe_sdk::fail!("k = {k} but the data has only {} distinct usable rows", rows.len());
                }
                Ok(Outcome::NextPass(Carry::Lloyd { initial: rows.clone(), centroids: rows }))
            }
            State::Seed { mut centers, best } => {
                let Some(pick) = best else {
                    if centers.is_empty() {
                        wasmpipe_sdk::fail!("no usable rows to cluster");
                    }
                    wasmpipe_sdk::fail!("k = {k} but the data has only {} distinct usable rows", centers.len());
                };
                wasmpipe_sdk::debug!("k-means++ center {} of {k}: {:?}", centers.len() + 1, pick.row);
                centers.push(pick.row);
                Ok(Outcome::NextPass(if centers.len() < k {
                    Carry::Seeding(centers)
                } else {
                    Carry::Lloyd { initial: centers.clone(), centroids: centers }
                }))
            }
            State::Lloyd { initial, centroids, rows, sizes, sums, inertia } => {
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
                    return Ok(Outcome::NextPass(Carry::Lloyd { initial, centroids: next }));
                }
                if converged {
                    wasmpipe_sdk::info!("converged in {} passes on {rows} rows, inertia {inertia:.6}", pass + 1);
                } else {
                    wasmpipe_sdk::warn!("stopped after max_iter = {} passes; the last move was {shift}", pass + 1);
                }
                let model = Model {
                    features: config.features,
                    centroids: next,
                    initial_centroids: initial,
                    inertia,
                    sizes,
                    rows,
                    passes: pass + 1,
                    converged,
                };
                wasmpipe_sdk::report(
                    &Report {
                        rows: model.rows,
                        inertia: model.inertia,
                        sizes: &model.sizes,
                        passes: model.passes,
                        converged,
                    },
                    None,
                )?;
                Ok(Outcome::Done(model))
            }
        }
    }
}

impl Apply for Model {
    fn apply(&self, batch: Batch) -> Result<Option<Batch>> {
        let x = columns(&batch, &self.features)?;
        let (best, index) = nearest(&x, &self.centroids)?;
        // NaN indices (a NaN feature) become null.
        let cluster = index.cast(&DataType::Int64)?;
        let out = batch.with_column("cluster", &cluster)?;
        Ok(Some(out.with_column("distance", &best.map(Unary::Sqrt)?)?))
    }
}

wasmpipe_sdk::export_estimator!(KMeans, Model);

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

    /// A stand-in for a row's uniform: its hash over 2^64, as the stage computes it.
    fn hash(seed: u64, row: usize) -> f64 {
        step_seed(seed, row) as f64 * 2f64.powi(-64)
    }

    #[test]
    fn clocks_draw_rows_in_proportion_to_their_weights() {
        let weights = [0.0, 1.0, 2.0, 3.0, 4.0, f64::NAN];
        let trials = 100_000;
        let (mut drawn, mut uniform) = ([0u32; 6], [0u32; 6]);
        for t in 0..trials {
            let hashes: Vec<f64> = (0..weights.len()).map(|i| hash(t, i)).collect();
            let (_, rows) = earliest(&hashes, Some(&weights)).unwrap();
            drawn[rows[0]] += 1;
            uniform[earliest(&hashes, None).unwrap().1[0]] += 1;
        }
        assert_eq!((drawn[0], drawn[5]), (0, 0), "weight 0 or NaN: never drawn");
        for (i, w) in weights.iter().enumerate().take(5).skip(1) {
            let share = drawn[i] as f64 / trials as f64;
            // Binomial standard deviation at most 0.0016: within 4 of them.
            assert!((share - w / 10.0).abs() < 0.0065, "row {i}: {share} vs {}", w / 10.0);
        }
        for (i, n) in uniform.iter().enumerate() {
            assert!((*n as f64 / trials as f64 - 1.0 / 6.0).abs() < 0.0065, "row {i}: {n} of {trials}");
        }
    }

    /// The merged pick of rows `data` (each `(row, weight)`) cut into `chunks`,
    /// in the order given, as partitions and the merge see them.
    fn pick(data: &[(Vec<f64>, f64)], chunk: usize, reverse: bool) -> Option<Pick> {
        let mut parts: Vec<Option<Pick>> = data
            .chunks(chunk)
            .map(|part| {
                // Equal rows hash equal, as the kernel's hash of the features does.
                let hashes: Vec<f64> = part.iter().map(|(r, _)| hash(7, r[0].to_bits() as usize)).collect();
                let weights: Vec<f64> = part.iter().map(|(_, w)| *w).collect();
                let (clock, rows) = earliest(&hashes, Some(&weights))?;
                rows.into_iter().map(|i| Some(Pick { clock, row: part[i].0.clone() })).fold(None, earlier)
            })
            .collect();
        if reverse {
            parts.reverse();
        }
        parts.into_iter().fold(None, earlier)
    }

    #[test]
    fn picks_do_not_depend_on_partitioning_or_merge_order() {
        let data: Vec<(Vec<f64>, f64)> = (0..40).map(|i| (vec![(i % 23) as f64, 1.0], ((i * 7) % 5) as f64)).collect();
        let whole = pick(&data, data.len(), false).expect("some row has weight");
        for chunk in 1..data.len() {
            assert_eq!(pick(&data, chunk, false).as_ref(), Some(&whole), "chunks of {chunk}");
            assert_eq!(pick(&data, chunk, true).as_ref(), Some(&whole), "chunks of {chunk}, merged backwards");
        }
        let zero: Vec<(Vec<f64>, f64)> = data.iter().map(|(r, _)| (r.clone(), 0.0)).collect();
        assert_eq!(pick(&zero, 3, false), None, "no row with weight: nothing to draw");
    }

    #[test]
    fn equal_clocks_go_to_the_smaller_row() {
        let a = Pick { clock: -1.0, row: vec![1.0, 5.0] };
        let b = Pick { clock: -1.0, row: vec![1.0, -5.0] };
        let c = Pick { clock: -2.0, row: vec![9.0, 9.0] };
        assert_eq!(earlier(Some(a.clone()), Some(b.clone())), Some(b.clone()));
        assert_eq!(earlier(Some(b.clone()), Some(a.clone())), Some(b.clone()));
        assert_eq!(earlier(Some(a.clone()), Some(c.clone())), Some(c));
        assert_eq!(earlier(None, Some(a.clone())), Some(a.clone()));
        assert_eq!(earlier(Some(a.clone()), None), Some(a));
    }

    #[test]
    fn clocks_stay_finite_and_ordered_at_the_extremes() {
        // u64::MAX over 2^64 rounds to 1.
        for (u, w) in [(0.0, 1.0), (1.0, 1.0), (1e-19, 5e-324), (1.0, f64::INFINITY), (1.0, f64::MAX), (0.0, 5e-324)] {
            assert!(clock(u, w).is_finite(), "clock({u}, {w}) = {}", clock(u, w));
        }
        // More weight, earlier; a larger u, earlier.
        assert!(clock(0.3, 2.0) < clock(0.3, 1.0));
        assert!(clock(0.9, 1.0) < clock(0.3, 1.0));
    }

    #[test]
    fn each_step_and_seed_hash_afresh() {
        let seeds: Vec<u64> = (0..4).flat_map(|s| (0..8).map(move |step| step_seed(s, step))).collect();
        let mut distinct = seeds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), seeds.len());
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

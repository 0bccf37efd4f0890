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
//! n_init = 1                 # default; k-means++ only: seedings run side by side, the least inertia kept
//! local_trials = 3           # default 2 + floor(ln k) (scikit-learn's), at most 20; k-means++ only: candidates per center
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
//! `max_iter` passes the stage stops with a warning. A fit that may take
//! more passes than the stage's `max_passes` limit (default 100) allows,
//! its seeding's included, is refused before any data moves.
//!
//! `init = "first"` takes the first k distinct rows of the data in
//! partition order: each partition collects its own first k distinct rows
//! in an extra pass, and the merge keeps the first k distinct of them. That
//! is the first k distinct rows of partition 0 whenever partition 0 has k
//! of them, and never depends on how the input is partitioned.
//!
//! `init = "k-means++"` is scikit-learn's greedy k-means++ (Arthur and
//! Vassilvitskii 2007, with local trials): the first center is a row drawn
//! uniformly at random; for each next one, `local_trials` candidate rows
//! are drawn with probability proportional to D(x)^2, the squared distance
//! of row x to the nearest center chosen so far, and the candidate that
//! leaves the least potential (the sum of D(x)^2 once it is a center)
//! becomes the center. `local_trials = 1` is plain k-means++ (one draw per
//! center, no choice: cheaper, and more often a worse local optimum).
//! Rows already chosen (D(x) = 0) are never drawn again; fewer than k
//! distinct rows fail the fit.
//!
//! The seeding takes k + 1 passes for k >= 2 (k with one trial; 1 for
//! k = 1): the first draws the first center, the second the first
//! candidates, and each later pass weighs the rows under every candidate at
//! once: it sums each candidate's potential and draws the next candidates
//! as if that candidate were chosen, so the finalize that keeps the best
//! candidate already has the next ones. Each pass computes the distances to
//! the centers chosen so far and to the candidates. `n_init` x
//! `local_trials`^2 is at most 4,000 (the rows a seeding pass keeps).
//!
//! `n_init` runs that many seedings and Lloyd's iterations from each, side
//! by side in the same passes (each initialization draws with its own
//! seeds), and keeps the one that ends with the least inertia, the first
//! of equal ones, as scikit-learn does; with more than one the model lists
//! every initialization's inertia. That inertia is the last pass's (see
//! Model): with the default `tol = 0` it is the returned centroids' own,
//! as scikit-learn's; an initialization stopped by `max_iter`, or moved
//! less than a `tol > 0`, is judged by the pass before its last move.
//!
//! Each draw is a weighted sample that needs no coordination between
//! partitions (Efraimidis and Spirakis' exponential clocks): every row gets
//! `u`, uniform in (0, 1), from the xxh3 hash of its features seeded with
//! `splitmix64(seed + lane * 0xd1b54a32d192ed03 + step * 0x9e3779b97f4a7c15)`
//! (`step` the number of centers chosen, `lane` the initialization times
//! 2^32 plus the trial), and the draw is the row
//! with the smallest clock `-ln(u) / D(x)^2` (of independent exponential
//! clocks with rates `w_i`, row `i` rings first with probability
//! `w_i / sum w`). Each partition keeps its earliest row, the merge keeps
//! the earlier of two, equal clocks going to the smaller row
//! (lexicographically, by `f64::total_cmp`). The clocks depend only on the
//! seed, the lane, the step and the rows' values, so the centers are the same rows at
//! any partitioning or parallelism, and the same seed gives the same
//! centers on every run. The candidates' potentials are sums merged in
//! partition order, so two candidates whose potentials differ only in the
//! last bits could be told apart differently at another partitioning;
//! drawn rows are data rows, so that takes two distinct candidates leaving
//! the same potential to 1e-16. The features are hashed rounded to f32, so that
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
//! rows; with `init = "k-means++"`, in each seeding pass, per
//! initialization, every row's hash per trial and D(x)^2 per candidate
//! (the numbers the clocks need), and the features of the rows each batch
//! draws, all in one copy.
//!
//! # Model
//!
//! JSON: `features`, `centroids` (k rows of `features.len()`),
//! `initial_centroids` (where the Lloyd passes started: the first rows, the
//! k-means++ centers or the given centroids), `inertia` (the sum of
//! squared distances of the rows to their nearest centroid in the last
//! pass; with `tol = 0` these are the final centroids), `sizes` (rows per
//! centroid in the last pass), `rows`, `passes` (init passes included),
//! `converged`, `n_init`, and with several initializations `inertias`
//! (each one's, in order; the model is the least). The stage's report
//! holds `rows`, `inertia`, `sizes`, `passes`, `converged` and `inertias`
//! (a run report plots the cluster sizes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{
    Apply, Batch, Column, Compare, DataType, Error, Estimator, Field, Outcome, Result, Schema, Task, Unary,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    features: Vec<String>,
    k: Option<usize>,
    init: Option<String>,
    seed: Option<u64>,
    n_init: Option<usize>,
    local_trials: Option<usize>,
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

/// Most initializations one fit runs side by side.
const MAX_N_INIT: usize = 50;

/// Most candidates a k-means++ step draws.
const MAX_LOCAL_TRIALS: usize = 20;

/// Most rows a seeding pass's state may hold: each initialization keeps,
/// per candidate, each trial's row for the next step.
const MAX_PICKS: usize = 4_000;

/// The config, checked, and what it implies.
struct Settings {
    config: Config,
    /// Clusters.
    k: usize,
    /// Initializations run side by side (1 unless k-means++).
    n_init: usize,
    /// Candidates each k-means++ step draws (scikit-learn's `2 + ln k`).
    trials: usize,
}

/// The config, checked.
fn settings() -> Result<Settings> {
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
    let plus_plus = config.init.as_deref() == Some(KMEANS_PP);
    for (key, given) in [
        ("seed", config.seed.is_some()),
        ("n_init", config.n_init.is_some()),
        ("local_trials", config.local_trials.is_some()),
    ] {
        if given && !plus_plus {
            return invalid(format!(
                "{key}: only used with init = \"{KMEANS_PP}\" (the other starts draw nothing at random)"
            ));
        }
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
    let n_init = config.n_init.unwrap_or(1);
    if !(1..=MAX_N_INIT).contains(&n_init) {
        return invalid(format!("n_init: from 1 to {MAX_N_INIT}, got {n_init}"));
    }
    // scikit-learn's choice: 2 + floor(ln k), within the bound.
    let trials = config.local_trials.unwrap_or((2 + (k as f64).ln() as usize).min(MAX_LOCAL_TRIALS));
    if !(1..=MAX_LOCAL_TRIALS).contains(&trials) {
        return invalid(format!("local_trials: from 1 to {MAX_LOCAL_TRIALS}, got {trials}"));
    }
    if n_init * trials * trials > MAX_PICKS {
        return invalid(format!(
            "n_init = {n_init} with local_trials = {trials}: a seeding pass would keep n_init x local_trials^2 = {} rows, more than {MAX_PICKS}; lower either",
            n_init * trials * trials
        ));
    }
    if config.max_iter < 1 {
        return invalid("max_iter: must be at least 1".into());
    }
    if config.tol.is_nan() || config.tol < 0.0 {
        return invalid(format!("tol: must be at least 0, got {}", config.tol));
    }
    Ok(Settings { config, k, n_init, trials })
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

/// Where a k-means++ seeding stands: the centers chosen so far (fewer than
/// k), and the candidates for the next (none: the next pass draws them, or
/// the first center).
#[derive(Serialize, Deserialize)]
struct Step {
    centers: Vec<Vec<f64>>,
    candidates: Vec<Vec<f64>>,
}

/// A row (or rows, on a tie) a batch drew: for initialization `run`,
/// hypothesis `hypothesis`, trial `trial`.
struct Draw {
    run: usize,
    hypothesis: usize,
    trial: usize,
    clock: f64,
    rows: Vec<usize>,
}

/// One k-means++ initialization's seeding pass.
///
/// The pass weighs each row by D(x)^2, its squared distance to the nearest
/// of `centers` and of a hypothesis: no more center when there are no
/// `candidates` (the pass that draws the first center, or the first
/// candidates), else each candidate in turn. Per hypothesis it sums the
/// weights (the potential the candidate would leave) and, when more
/// centers are needed, draws each trial's row for the next step.
#[derive(Serialize, Deserialize, Clone)]
struct Seeding {
    centers: Vec<Vec<f64>>,
    candidates: Vec<Vec<f64>>,
    /// Per candidate: the sum of the weights.
    potentials: Vec<f64>,
    /// Per hypothesis: each trial's earliest row.
    picks: Vec<Vec<Option<Pick>>>,
}

impl Seeding {
    fn new(Step { centers, candidates }: Step) -> Seeding {
        let hypotheses = candidates.len().max(1);
        Seeding { potentials: vec![0.0; candidates.len()], picks: vec![Vec::new(); hypotheses], centers, candidates }
    }

    /// The hypotheses: each candidate, or none.
    fn hypotheses(&self) -> Vec<Option<&[f64]>> {
        if self.candidates.is_empty() { vec![None] } else { self.candidates.iter().map(|c| Some(&c[..])).collect() }
    }
}

/// One initialization's Lloyd pass from `centroids` (the first one from
/// `initial`); `finished` once it has converged or run out of passes.
#[derive(Serialize, Deserialize, Clone)]
struct Lloyd {
    initial: Vec<Vec<f64>>,
    centroids: Vec<Vec<f64>>,
    finished: Option<Finished>,
}

/// Where an initialization ended.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Finished {
    inertia: f64,
    sizes: Vec<u64>,
    converged: bool,
}

/// A Lloyd pass's sums for one unfinished initialization: per centroid,
/// the sums of its rows' features and their number; the squared
/// distances' sum.
#[derive(Serialize, Deserialize)]
struct Sums {
    sizes: Vec<u64>,
    sums: Vec<Vec<f64>>,
    inertia: f64,
}

/// One partition's partial state.
#[derive(Serialize, Deserialize)]
enum State {
    /// `init = "first"`: the first distinct rows seen, at most k.
    First { k: usize, rows: Vec<Vec<f64>> },
    /// A k-means++ seeding pass, per initialization.
    Seed(Vec<Seeding>),
    /// A Lloyd pass: per initialization, where it stands and its sums
    /// (none once finished); the usable rows.
    Lloyd { runs: Vec<Lloyd>, sums: Vec<Option<Sums>>, rows: u64 },
}

/// What a pass hands the next.
#[derive(Serialize, Deserialize)]
enum Carry {
    /// k-means++: per initialization, where its seeding stands.
    Seeding(Vec<Step>),
    /// Lloyd: per initialization, the centroids to assign to.
    Lloyd(Vec<Lloyd>),
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
    /// Initializations run (the model is the one of least inertia).
    #[serde(default = "one")]
    n_init: usize,
    /// Each initialization's final inertia, when there were several (null
    /// where it is not a number).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inertias: Vec<Option<f64>>,
}

fn one() -> usize {
    1
}

/// The stage's report: the model's numbers, without its centroids.
#[derive(Serialize)]
struct Report<'a> {
    rows: u64,
    inertia: f64,
    sizes: &'a [u64],
    passes: u32,
    converged: bool,
    #[serde(skip_serializing_if = "<[Option<f64>]>::is_empty")]
    inertias: &'a [Option<f64>],
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

/// The Lloyd passes' state for `runs`: zero sums for the unfinished ones.
fn lloyd(runs: Vec<Lloyd>) -> State {
    let sums = runs
        .iter()
        .map(|run| {
            let (k, d) = (run.centroids.len(), run.centroids[0].len());
            run.finished.is_none().then(|| Sums { sizes: vec![0; k], sums: vec![vec![0.0; d]; k], inertia: 0.0 })
        })
        .collect();
    State::Lloyd { runs, sums, rows: 0 }
}

/// Lloyd's first pass from `initial`.
fn start(initial: Vec<Vec<f64>>) -> Lloyd {
    Lloyd { centroids: initial.clone(), initial, finished: None }
}

/// splitmix64 of `seed + step * golden ratio`, so every step draws afresh.
fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed.wrapping_add((step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash seed of trial `trial` of k-means++ step `step` (the number of
/// centers chosen) of initialization `run`: [`step_seed`] of the seed moved
/// by the run and the trial (not moved for the first trial of the first
/// run, which draws as plain k-means++ always has).
fn draw_seed(seed: u64, run: usize, step: usize, trial: usize) -> u64 {
    let lane = ((run as u64) << 32) | trial as u64;
    step_seed(seed.wrapping_add(lane.wrapping_mul(0xd1b5_4a32_d192_ed03)), step)
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

/// The index of the smallest value, the first of equal ones (as numpy's
/// `argmin`); NaN counts as larger than every number.
fn least(values: &[f64]) -> usize {
    let key = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
    values.iter().enumerate().fold(0, |best, (i, v)| if key(*v) < key(values[best]) { i } else { best })
}

/// Fold one batch's usable rows `x` (hashed as `rounded`) into each
/// initialization's seeding pass.
fn seed_batch(seedings: &mut [Seeding], batch: &Batch, x: &[Column], settings: &Settings) -> Result<()> {
    let rounded = x.iter().map(|c| c.cast(&DataType::Float32)).collect::<Result<Vec<_>>>()?;
    let rounded: Vec<&Column> = rounded.iter().collect();
    // The rows drawn, by (initialization, hypothesis, trial), and their clocks.
    let mut drawn: Vec<Draw> = Vec::new();
    for (run, seeding) in seedings.iter_mut().enumerate() {
        let base = if seeding.centers.is_empty() { None } else { Some(nearest(x, &seeding.centers)?.0) };
        let step = seeding.centers.len() + usize::from(!seeding.candidates.is_empty());
        // The first center is drawn uniformly, alone; later steps draw `trials` candidates.
        let trials = if step == settings.k {
            0
        } else if step == 0 {
            1
        } else {
            settings.trials
        };
        let uniforms = (0..trials)
            .map(|t| {
                let seed = draw_seed(settings.config.seed.unwrap_or(0), run, step, t);
                wasmpipe_sdk::hash_rows(&rounded, seed)?.mul_scalar(2f64.powi(-64))?.read_f64()
            })
            .collect::<Result<Vec<_>>>()?;
        let hypotheses = seeding.hypotheses();
        let mut potentials = Vec::new();
        for (h, candidate) in hypotheses.iter().enumerate() {
            let weighed;
            let weights = match (candidate, &base) {
                (None, base) => base.as_ref(),
                (Some(c), None) => {
                    weighed = squared_distance(x, c)?;
                    Some(&weighed)
                }
                (Some(c), Some(base)) => {
                    let d = squared_distance(x, c)?;
                    weighed = d.compare_column(Compare::Lt, base)?.choose(&d, base)?;
                    Some(&weighed)
                }
            };
            if let (Some(_), Some(w)) = (candidate, weights) {
                potentials.push(w.summarize()?.sum);
            }
            if uniforms.is_empty() {
                continue;
            }
            let weights = weights.map(|w| w.read_f64()).transpose()?;
            for (t, u) in uniforms.iter().enumerate() {
                if let Some((clock, rows)) = earliest(u, weights.as_deref()) {
                    drawn.push(Draw { run, hypothesis: h, trial: t, clock, rows });
                }
            }
        }
        seeding.potentials.iter_mut().zip(potentials).for_each(|(p, q)| *p += q);
        for picks in &mut seeding.picks {
            picks.resize(trials, None);
        }
    }
    // Copy in the drawn rows' features (more than one per draw only on a tie), all at once.
    let wanted: BTreeMap<usize, usize> = drawn
        .iter()
        .flat_map(|d| d.rows.iter().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(at, row)| (row, at))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut mask = vec![false; batch.num_rows() as usize];
    wanted.keys().for_each(|&i| mask[i] = true);
    let chosen = batch.filter_rows(&mask)?;
    let values =
        columns(&chosen, &settings.config.features)?.iter().map(|c| c.read_f64()).collect::<Result<Vec<_>>>()?;
    for Draw { run, hypothesis, trial, clock, rows } in drawn {
        for i in rows {
            let row = values.iter().map(|col| col[wanted[&i]]).collect();
            let pick = &mut seedings[run].picks[hypothesis][trial];
            *pick = earlier(pick.take(), Some(Pick { clock, row }));
        }
    }
    Ok(())
}

/// The next pass after a seeding pass: the candidate of least potential
/// joins the centers, and the rows drawn under it are the next candidates
/// (or, for the first center and with one trial, the next center itself).
fn next_seeding(seeding: Seeding, settings: &Settings) -> Result<Step> {
    let Seeding { mut centers, candidates, potentials, mut picks } = seeding;
    let chosen = if candidates.is_empty() { 0 } else { least(&potentials) };
    if let Some(candidate) = candidates.into_iter().nth(chosen) {
        centers.push(candidate);
    }
    if centers.len() == settings.k {
        return Ok(Step { centers, candidates: Vec::new() });
    }
    let drawn = std::mem::take(&mut picks[chosen]);
    let Some(rows) = drawn.into_iter().map(|p| p.map(|p| p.row)).collect::<Option<Vec<_>>>().filter(|r| !r.is_empty())
    else {
        if centers.is_empty() {
            wasmpipe_sdk::fail!("no usable rows to cluster");
        }
        wasmpipe_sdk::fail!("k = {} but the data has only {} distinct usable rows", settings.k, centers.len());
    };
    if centers.is_empty() || settings.trials == 1 {
        wasmpipe_sdk::debug!("k-means++ center {} of {}: {:?}", centers.len() + 1, settings.k, rows[0]);
        centers.extend(rows.into_iter().take(1));
        return Ok(Step { centers, candidates: Vec::new() });
    }
    Ok(Step { centers, candidates: rows })
}

struct KMeans;

impl Estimator for KMeans {
    type State = State;
    type Carry = Carry;
    type Model = Model;

    /// The seeding's passes (see the module's documentation), then Lloyd's
    /// up to `max_iter` in all, at least one.
    fn fit_passes(_task: &Task) -> Result<Option<u32>> {
        let Settings { config, k, trials, .. } = settings()?;
        let k = k as u64;
        let seeding = match (&config.centroids, config.init.as_deref()) {
            (Some(_), _) => 0,
            (None, Some(KMEANS_PP)) if k == 1 => 1,
            (None, Some(KMEANS_PP)) if trials == 1 => k,
            (None, Some(KMEANS_PP)) => k + 1,
            (None, _) => 1,
        };
        let passes = u64::from(config.max_iter).max(seeding + 1);
        Ok(Some(u32::try_from(passes).unwrap_or(u32::MAX)))
    }

    fn begin(_task: &Task, carry: Option<Carry>) -> Result<State> {
        let Settings { config, k, n_init, .. } = settings()?;
        Ok(match (carry, config.centroids) {
            (Some(Carry::Lloyd(runs)), _) => lloyd(runs),
            (Some(Carry::Seeding(runs)), _) => State::Seed(runs.into_iter().map(Seeding::new).collect()),
            (None, Some(centroids)) => lloyd(vec![start(centroids)]),
            (None, None) if config.init.as_deref() == Some(KMEANS_PP) => State::Seed(
                (0..n_init).map(|_| Seeding::new(Step { centers: Vec::new(), candidates: Vec::new() })).collect(),
            ),
            (None, None) => State::First { k, rows: Vec::new() },
        })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let settings = settings()?;
        let features = &settings.config.features;
        match state {
            State::First { k, rows } => {
                if rows.len() >= *k {
                    return Ok(());
                }
                // Copy this batch's features in, until k distinct rows are found.
                let batch = usable(batch, features)?;
                let values = columns(&batch, features)?.iter().map(|c| c.read_f64()).collect::<Result<Vec<_>>>()?;
                let n = batch.num_rows() as usize;
                add_distinct(rows, (0..n).map(|i| values.iter().map(|col| col[i]).collect()), *k);
            }
            State::Seed(seedings) => {
                let batch = usable(batch, features)?;
                if batch.num_rows() > 0 {
                    seed_batch(seedings, &batch, &columns(&batch, features)?, &settings)?;
                }
            }
            State::Lloyd { runs, sums, rows } => {
                let batch = usable(batch, features)?;
                if batch.num_rows() == 0 {
                    return Ok(());
                }
                *rows += batch.num_rows();
                let x = columns(&batch, features)?;
                for (run, sums) in runs.iter().zip(sums.iter_mut()) {
                    let Some(Sums { sizes, sums, inertia }) = sums else { continue };
                    let (best, index) = nearest(&x, &run.centroids)?;
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
        }
        Ok(())
    }

    fn merge(left: State, right: State) -> Result<State> {
        Ok(match (left, right) {
            (State::First { k, mut rows }, State::First { rows: more, .. }) => {
                add_distinct(&mut rows, more, k);
                State::First { k, rows }
            }
            (State::Seed(mut left), State::Seed(right)) => {
                for (a, b) in left.iter_mut().zip(right) {
                    a.potentials.iter_mut().zip(b.potentials).for_each(|(a, b)| *a += b);
                    for (mine, theirs) in a.picks.iter_mut().zip(b.picks) {
                        mine.resize(mine.len().max(theirs.len()), None);
                        for (pick, other) in mine.iter_mut().zip(theirs) {
                            *pick = earlier(pick.take(), other);
                        }
                    }
                }
                State::Seed(left)
            }
            (State::Lloyd { runs, mut sums, rows }, State::Lloyd { sums: more, rows: r, .. }) => {
                for (a, b) in sums.iter_mut().zip(more) {
                    if let (Some(a), Some(b)) = (a, b) {
                        a.sizes.iter_mut().zip(b.sizes).for_each(|(a, b)| *a += b);
                        for (a, b) in a.sums.iter_mut().zip(b.sums) {
                            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                        }
                        a.inertia += b.inertia;
                    }
                }
                State::Lloyd { runs, sums, rows: rows + r }
            }
            _ => wasmpipe_sdk::fail!("cannot merge states of different passes"),
        })
    }

    fn finalize(state: State, pass: u32) -> Result<Outcome<Model, Carry>> {
        let settings = settings()?;
        match state {
            State::First { k, rows } => {
                if rows.len() < k {
                    wasmpipe_sdk::fail!("k = {k} but the data has only {} distinct usable rows", rows.len());
                }
                Ok(Outcome::NextPass(Carry::Lloyd(vec![start(rows)])))
            }
            State::Seed(seedings) => {
                let next = seedings.into_iter().map(|s| next_seeding(s, &settings)).collect::<Result<Vec<_>>>()?;
                // Every initialization takes the same steps, so all are seeded at once.
                if next.iter().all(|step| step.centers.len() == settings.k) {
                    return Ok(Outcome::NextPass(Carry::Lloyd(
                        next.into_iter().map(|step| start(step.centers)).collect(),
                    )));
                }
                Ok(Outcome::NextPass(Carry::Seeding(next)))
            }
            State::Lloyd { runs, sums, rows } => {
                if rows == 0 {
                    wasmpipe_sdk::fail!("no usable rows to cluster");
                }
                let last = pass + 1 >= settings.config.max_iter;
                let several = runs.len() > 1;
                let mut next = Vec::with_capacity(runs.len());
                for (i, (run, sums)) in runs.into_iter().zip(sums).enumerate() {
                    let Some(Sums { sizes, sums, inertia }) = sums else {
                        next.push(run);
                        continue;
                    };
                    let empty = sizes.iter().filter(|&&n| n == 0).count();
                    let which = if several { format!(", initialization {i}") } else { String::new() };
                    if empty > 0 {
                        wasmpipe_sdk::warn!(
                            "pass {pass}{which}: {empty} centroid(s) have no rows and stay where they are"
                        );
                    }
                    let (moved, shift) = move_centroids(&run.centroids, &sums, &sizes);
                    wasmpipe_sdk::debug!("pass {pass}{which}: inertia {inertia}, largest move {shift}");
                    let converged = shift <= settings.config.tol;
                    let finished = (converged || last).then_some(Finished { inertia, sizes, converged });
                    next.push(Lloyd { initial: run.initial, centroids: moved, finished });
                }
                if next.iter().any(|run| run.finished.is_none()) {
                    return Ok(Outcome::NextPass(Carry::Lloyd(next)));
                }
                let inertias: Vec<f64> =
                    next.iter().map(|r| r.finished.as_ref().map_or(f64::NAN, |f| f.inertia)).collect();
                let best = least(&inertias);
                let Lloyd { initial, centroids, finished } = next.swap_remove(best);
                let Finished { inertia, sizes, converged } = finished.expect("every initialization has finished");
                if converged {
                    wasmpipe_sdk::info!("converged within {} passes on {rows} rows, inertia {inertia:.6}", pass + 1);
                } else {
                    wasmpipe_sdk::warn!("stopped after max_iter = {} passes without converging", pass + 1);
                }
                if several {
                    wasmpipe_sdk::info!("kept initialization {best} of {}: inertias {inertias:?}", inertias.len());
                }
                let model = Model {
                    features: settings.config.features,
                    centroids,
                    initial_centroids: initial,
                    inertia,
                    sizes,
                    rows,
                    passes: pass + 1,
                    converged,
                    n_init: inertias.len(),
                    inertias: if several {
                        inertias.iter().map(|&i| i.is_finite().then_some(i)).collect()
                    } else {
                        Vec::new()
                    },
                };
                wasmpipe_sdk::report(
                    &Report {
                        rows: model.rows,
                        inertia: model.inertia,
                        sizes: &model.sizes,
                        passes: model.passes,
                        converged,
                        inertias: &model.inertias,
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

    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        let settings = settings()?;
        wasmpipe_sdk::numeric(input, &settings.config.features)?;
        let out = wasmpipe_sdk::with_field(input, "cluster", DataType::Int64);
        Ok(Some(wasmpipe_sdk::with_field(&out, "distance", DataType::Float64)))
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
    fn the_first_trial_of_the_first_initialization_draws_as_plain_k_means_plus_plus() {
        for seed in [0, 7, u64::MAX] {
            for step in 0..5 {
                assert_eq!(draw_seed(seed, 0, step, 0), step_seed(seed, step));
            }
        }
        let lanes: Vec<u64> = (0..3)
            .flat_map(|run| (0..4).flat_map(move |trial| (0..3).map(move |step| draw_seed(1, run, step, trial))))
            .collect();
        let mut distinct = lanes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), lanes.len(), "every initialization, trial and step draws afresh");
    }

    #[test]
    fn the_least_potential_wins_and_the_first_of_equal_ones() {
        assert_eq!(least(&[3.0, 1.0, 2.0, 1.0]), 1);
        assert_eq!(least(&[5.0]), 0);
        assert_eq!(least(&[2.0, 2.0]), 0);
        assert_eq!(least(&[f64::NAN, 1.0]), 1, "NaN never wins");
        assert_eq!(least(&[f64::NAN, f64::NAN]), 0);
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

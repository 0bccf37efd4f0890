//! Regression evaluation (aggregator): R^2, RMSE and MAE of a prediction
//! column against a target column, from mergeable partial sums. The result
//! is a JSON metrics document, also published as the stage's report (JSON,
//! and Parquet rows `metric, class, value`); the stage logs `r2 = ...`. The sums are
//! computed by native host kernels; no values are copied into the sandbox.
//!
//! ```toml
//! [stage.evaluate.config]
//! target = "target"
//! prediction = "prediction"   # default
//! ```
//!
//! Rows where either value is null or NaN are not counted.
//!
//! The report also carries `sample`: up to 500 `(actual, predicted)` pairs
//! for a run report's plots (predicted against actual, residuals), the
//! pairs of smallest hash (`hash_rows` of the two values). A bottom-k by
//! hash merges exactly, so the sample is the same at any partitioning;
//! only those pairs are copied into the sandbox.

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Batch, Column, Compare, DataType, Estimator, Outcome, Result, SortKey, Task, Unary};

/// Most `(actual, predicted)` pairs in the report's sample.
const SAMPLE: usize = 500;

/// The seed of the sample's hash.
const SAMPLE_SEED: u64 = 0x5eed_5a3b;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    target: String,
    #[serde(default = "default_prediction")]
    prediction: String,
}

fn default_prediction() -> String {
    "prediction".into()
}

/// Mergeable partials: count, target mean and spread (Chan's update),
/// squared and absolute error sums.
#[derive(Serialize, Deserialize, Default)]
struct State {
    n: u64,
    mean: f64,
    m2: f64,
    sse: f64,
    sae: f64,
    /// `(hash, actual, predicted)`, ascending, at most [`SAMPLE`].
    sample: Vec<(f64, f64, f64)>,
}

/// The [`SAMPLE`] smallest of two ascending samples.
fn merge_samples(a: Vec<(f64, f64, f64)>, b: Vec<(f64, f64, f64)>) -> Vec<(f64, f64, f64)> {
    let mut all = [a, b].concat();
    let key = |e: &(f64, f64, f64)| (e.0.to_bits(), e.1.to_bits(), e.2.to_bits());
    all.sort_by_key(key);
    all.truncate(SAMPLE);
    all
}

/// The metrics document.
#[derive(Serialize, Deserialize)]
struct Metrics {
    rows: u64,
    r2: f64,
    rmse: f64,
    mae: f64,
}

/// The `(actual, predicted)` pairs of the report's sample.
#[derive(Serialize)]
struct Sample {
    actual: Vec<f64>,
    predicted: Vec<f64>,
}

/// What the stage publishes as its report.
#[derive(Serialize)]
struct Published<'a> {
    #[serde(flatten)]
    metrics: &'a Metrics,
    sample: Sample,
}

struct Evaluate;

impl Estimator for Evaluate {
    type State = State;
    type Carry = ();
    type Model = Metrics;

    fn begin(_task: &Task, _carry: Option<()>) -> Result<State> {
        let _: Config = wasmpipe_sdk::config()?;
        Ok(State::default())
    }

    fn update(s: &mut State, batch: &Batch) -> Result<()> {
        let config: Config = wasmpipe_sdk::config()?;
        let (y, p) = (batch.column(&config.target)?, batch.column(&config.prediction)?);
        // Everything runs on host kernels: keep rows where both are finite,
        // summarize the target, and reduce the residuals.
        let finite = |c: &Column| -> Result<Column> {
            c.compare(Compare::Gt, f64::NEG_INFINITY)?.and(&c.compare(Compare::Lt, f64::INFINITY)?)
        };
        let keep = finite(&y)?.and(&finite(&p)?)?;
        let (y, p) = (y.filter_by(&keep)?, p.filter_by(&keep)?);
        let t = y.summarize()?;
        let residual = y.sub(&p)?;
        let hash = wasmpipe_sdk::hash_rows(&[&y, &p], SAMPLE_SEED)?;
        let first = wasmpipe_sdk::sort_to_indices(&[&hash], &[SortKey { descending: false, nulls_first: false }])?;
        let first = first.slice(0, first.len().min(SAMPLE as u64))?;
        // The hashes are uint64, which the guest reads as f64.
        let hash = hash.cast(&DataType::Float64)?;
        let [h, a, q] = [&hash, &y, &p].map(|c| c.take(&first).and_then(|c| c.read_f64()));
        let sample = h?.into_iter().zip(a?).zip(q?).map(|((h, a), q)| (h, a, q)).collect();
        let part = State {
            n: t.count,
            mean: t.mean,
            m2: t.m2,
            sse: residual.dot(&residual)?,
            sae: residual.map(Unary::Abs)?.summarize()?.sum,
            sample: merge_samples(sample, Vec::new()),
        };
        *s = Evaluate::merge(std::mem::take(s), part)?;
        Ok(())
    }

    fn merge(a: State, b: State) -> Result<State> {
        if a.n == 0 {
            return Ok(b);
        }
        if b.n == 0 {
            return Ok(a);
        }
        let sample = merge_samples(a.sample, b.sample);
        let n = a.n + b.n;
        let delta = b.mean - a.mean;
        Ok(State {
            n,
            mean: a.mean + delta * (b.n as f64 / n as f64),
            m2: a.m2 + b.m2 + delta * delta * (a.n as f64 * b.n as f64 / n as f64),
            sse: a.sse + b.sse,
            sae: a.sae + b.sae,
            sample,
        })
    }

    fn finalize(s: State, _pass: u32) -> Result<Outcome<Metrics, ()>> {
        if s.n == 0 {
            wasmpipe_sdk::fail!("no rows with both a target and a prediction to evaluate");
        }
        let n = s.n as f64;
        let metrics = Metrics { rows: s.n, r2: 1.0 - s.sse / s.m2, rmse: (s.sse / n).sqrt(), mae: s.sae / n };
        wasmpipe_sdk::info!("r2 = {:.4}", metrics.r2);
        wasmpipe_sdk::info!("rmse = {:.4}, mae = {:.4} over {} rows", metrics.rmse, metrics.mae, metrics.rows);
        let rows = [("rows", metrics.rows as f64), ("r2", metrics.r2), ("rmse", metrics.rmse), ("mae", metrics.mae)];
        let table = wasmpipe_sdk::metrics_table(&rows.map(|(m, v)| (m.to_string(), None, v)))?;
        let (actual, predicted) = s.sample.iter().map(|&(_, a, p)| (a, p)).unzip();
        let published = Published { metrics: &metrics, sample: Sample { actual, predicted } };
        wasmpipe_sdk::report(&published, Some(&table))?;
        Ok(Outcome::Done(metrics))
    }
}

wasmpipe_sdk::export_aggregator!(Evaluate);

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pairs: &[(f64, f64)]) -> State {
        let mut s = State::default();
        for &(y, p) in pairs {
            s.n += 1;
            let delta = y - s.mean;
            s.mean += delta / s.n as f64;
            s.m2 += delta * (y - s.mean);
            s.sse += (y - p) * (y - p);
            s.sae += (y - p).abs();
            s.sample = merge_samples(s.sample, vec![((y * 7.0 + p).sin(), y, p)]);
        }
        s
    }

    #[test]
    fn merging_partials_gives_the_whole() {
        let pairs: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, i as f64 + (i % 7) as f64 - 3.0)).collect();
        let whole = state(&pairs);
        let merged = pairs.chunks(13).map(state).try_fold(State::default(), Evaluate::merge).unwrap();
        assert_eq!(merged.n, whole.n);
        for (a, b) in
            [(merged.mean, whole.mean), (merged.m2, whole.m2), (merged.sse, whole.sse), (merged.sae, whole.sae)]
        {
            assert!((a - b).abs() < 1e-9 * b.abs().max(1.0), "{a} vs {b}");
        }
        let many: Vec<(f64, f64)> = (0..2_000).map(|i| (i as f64, (i * 3 % 17) as f64)).collect();
        let whole = state(&many);
        let merged = many.chunks(97).map(state).try_fold(State::default(), Evaluate::merge).unwrap();
        assert_eq!(whole.sample.len(), SAMPLE);
        assert_eq!(merged.sample, whole.sample);
    }
}

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

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Batch, Column, Compare, Estimator, Outcome, Result, Task, Unary};

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
}

/// The metrics document.
#[derive(Serialize, Deserialize)]
struct Metrics {
    rows: u64,
    r2: f64,
    rmse: f64,
    mae: f64,
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
        let part = State {
            n: t.count,
            mean: t.mean,
            m2: t.m2,
            sse: residual.dot(&residual)?,
            sae: residual.map(Unary::Abs)?.summarize()?.sum,
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
        let n = a.n + b.n;
        let delta = b.mean - a.mean;
        Ok(State {
            n,
            mean: a.mean + delta * (b.n as f64 / n as f64),
            m2: a.m2 + b.m2 + delta * delta * (a.n as f64 * b.n as f64 / n as f64),
            sse: a.sse + b.sse,
            sae: a.sae + b.sae,
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
        wasmpipe_sdk::report(&metrics, Some(&table))?;
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
    }
}

//! The benchmarks' baseline: the scaler and the linear-regression fit
//! written the way a stage must be written without native kernels, by
//! copying every column into guest memory and looping there. Also a probe
//! of the cost of one trivial hostcall. Not for pipelines.
//!
//! `mode = "scaler"` (columns), `"linreg"` (columns, target) or
//! `"hostcalls"` (calls: how many `num-rows` calls per batch).

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Batch, Column, DataType, Estimator, Field, Outcome, Predictor, Result, Schema, Task};

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: String,
    #[serde(default)]
    columns: Vec<String>,
    target: Option<String>,
    #[serde(default)]
    calls: u64,
}

/// Per-column (count, mean, m2) for the scaler; X^T X and X^T y for linreg.
#[derive(Serialize, Deserialize, Clone, Default)]
struct State {
    moments: Vec<(u64, f64, f64)>,
    xtx: Vec<f64>,
    xty: Vec<f64>,
    rows: u64,
}

struct Baseline;

fn merge_moments(a: (u64, f64, f64), b: (u64, f64, f64)) -> (u64, f64, f64) {
    if a.0 == 0 {
        return b;
    }
    if b.0 == 0 {
        return a;
    }
    let n = a.0 + b.0;
    let delta = b.1 - a.1;
    (n, a.1 + delta * (b.0 as f64 / n as f64), a.2 + b.2 + delta * delta * (a.0 as f64 * b.0 as f64 / n as f64))
}

impl Estimator for Baseline {
    type State = State;
    type Carry = ();
    type Model = State;

    fn begin(_task: &Task, _carry: Option<()>) -> Result<State> {
        let c: Config = wasmpipe_sdk::config()?;
        let k = c.columns.len() + 1;
        Ok(State { moments: vec![(0, 0.0, 0.0); c.columns.len()], xtx: vec![0.0; k * k], xty: vec![0.0; k], rows: 0 })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let c: Config = wasmpipe_sdk::config()?;
        match c.mode.as_str() {
            "scaler" => {
                for (name, m) in c.columns.iter().zip(&mut state.moments) {
                    let x = batch.f64s(name)?;
                    let n = x.len() as u64;
                    let mean = x.iter().sum::<f64>() / n as f64;
                    let m2 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
                    *m = merge_moments(*m, (n, mean, m2));
                }
            }
            "linreg" => {
                let x: Vec<Vec<f64>> = c.columns.iter().map(|n| batch.f64s(n)).collect::<Result<_>>()?;
                let y = batch.f64s(c.target.as_deref().unwrap_or("target"))?;
                let k = x.len() + 1;
                let mut row = vec![1.0; k];
                for (i, yi) in y.iter().enumerate() {
                    for (j, col) in x.iter().enumerate() {
                        row[j + 1] = col[i];
                    }
                    for (a, &ra) in row.iter().enumerate() {
                        state.xty[a] += ra * yi;
                        for (b, &rb) in row.iter().enumerate().skip(a) {
                            state.xtx[a * k + b] += ra * rb;
                        }
                    }
                }
                state.rows += y.len() as u64;
            }
            "hostcalls" => {
                let mut total = 0;
                for _ in 0..c.calls {
                    total += std::hint::black_box(batch.num_rows());
                }
                state.rows += total;
            }
            other => wasmpipe_sdk::fail!("unknown mode {other:?}"),
        }
        Ok(())
    }

    fn merge(mut left: State, right: State) -> Result<State> {
        for (l, r) in left.moments.iter_mut().zip(right.moments) {
            *l = merge_moments(*l, r);
        }
        left.xtx.iter_mut().zip(right.xtx).for_each(|(a, b)| *a += b);
        left.xty.iter_mut().zip(right.xty).for_each(|(a, b)| *a += b);
        left.rows += right.rows;
        Ok(left)
    }

    fn finalize(state: State, _pass: u32) -> Result<Outcome<State, ()>> {
        Ok(Outcome::Done(state))
    }
}

/// Scaler transform by copying: read, compute, write back.
struct Apply(State, Config);

impl Predictor for Apply {
    type Model = State;

    fn open(_task: &Task, model: State) -> Result<Self> {
        Ok(Apply(model, wasmpipe_sdk::config()?))
    }

    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        let c: Config = wasmpipe_sdk::config()?;
        wasmpipe_sdk::numeric(input, &c.columns)?;
        Ok(Some(c.columns.iter().fold(input.to_vec(), |s, n| wasmpipe_sdk::with_field(&s, n, DataType::Float64))))
    }

    fn transform(&mut self, mut batch: Batch) -> Result<Option<Batch>> {
        for (name, &(n, mean, m2)) in self.1.columns.iter().zip(&self.0.moments) {
            let std = (m2 / n as f64).sqrt();
            let column = batch.column(name)?;
            let scaled: Vec<f64> = column.read_f64()?.iter().map(|x| (x - mean) / std).collect();
            batch = batch.with_column(name, &Column::from_f64(&scaled, column.validity().as_deref())?)?;
        }
        Ok(Some(batch))
    }
}

wasmpipe_sdk::export_estimator!(Baseline, Apply);

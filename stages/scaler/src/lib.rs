//! Standard scaler (estimator): learns each column's mean and population
//! standard deviation, then maps x to (x - mean) / std, as scikit-learn's
//! `StandardScaler`. Partition states merge exactly with Chan et al.'s
//! pairwise update, so the result does not depend on partitioning beyond
//! floating-point rounding. Null and NaN values are skipped when fitting
//! (as scikit-learn does) and stay null or NaN. Both halves run on native
//! host kernels: no column values are copied into the sandbox.
//!
//! ```toml
//! [stage.scale.config]
//! columns = ["age", "bmi"]
//! ```

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Apply, Batch, DataType, Estimator, Field, Outcome, Result, Schema, Task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    columns: Vec<String>,
}

/// Running moments of one column.
#[derive(Serialize, Deserialize, Clone, Copy, Default)]
struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    #[cfg(test)]
    fn push(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    fn merge(a: Moments, b: Moments) -> Moments {
        if a.n == 0 {
            return b;
        }
        if b.n == 0 {
            return a;
        }
        let n = a.n + b.n;
        let delta = b.mean - a.mean;
        let mean = a.mean + delta * (b.n as f64 / n as f64);
        let m2 = a.m2 + b.m2 + delta * delta * (a.n as f64 * b.n as f64 / n as f64);
        Moments { n, mean, m2 }
    }
}

#[derive(Serialize, Deserialize)]
struct State {
    columns: Vec<String>,
    moments: Vec<Moments>,
}

#[derive(Serialize, Deserialize)]
struct Model {
    columns: Vec<String>,
    mean: Vec<f64>,
    std: Vec<f64>,
}

struct Scaler;

impl Estimator for Scaler {
    type State = State;
    type Carry = ();
    type Model = Model;

    fn begin(_task: &Task, _carry: Option<()>) -> Result<State> {
        let config: Config = wasmpipe_sdk::config()?;
        let moments = vec![Moments::default(); config.columns.len()];
        Ok(State { columns: config.columns, moments })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        // The host summarizes each column natively; no values are copied in.
        for (name, m) in state.columns.iter().zip(&mut state.moments) {
            let s = batch.column(name)?.summarize()?;
            *m = Moments::merge(*m, Moments { n: s.count, mean: s.mean, m2: s.m2 });
        }
        Ok(())
    }

    fn merge(mut left: State, right: State) -> Result<State> {
        for (l, r) in left.moments.iter_mut().zip(right.moments) {
            *l = Moments::merge(*l, r);
        }
        Ok(left)
    }

    fn finalize(state: State, _pass: u32) -> Result<Outcome<Model, ()>> {
        let mean = state.moments.iter().map(|m| m.mean).collect();
        let std = state
            .moments
            .iter()
            .map(|m| {
                let sd = if m.n == 0 { 0.0 } else { (m.m2 / m.n as f64).sqrt() };
                // A constant column scales by 1, as scikit-learn does.
                if sd == 0.0 { 1.0 } else { sd }
            })
            .collect();
        for (name, m) in state.columns.iter().zip(&state.moments) {
            wasmpipe_sdk::debug!("{name}: n = {}, mean = {}", m.n, m.mean);
        }
        Ok(Outcome::Done(Model { columns: state.columns, mean, std }))
    }
}

impl Apply for Model {
    fn apply(&self, mut batch: Batch) -> Result<Option<Batch>> {
        for ((name, mean), std) in self.columns.iter().zip(&self.mean).zip(&self.std) {
            // (x - mean) / std in the host, handle to handle.
            let scaled = batch.column(name)?.standardize(*mean, *std)?;
            batch = batch.with_column(name, &scaled)?;
        }
        Ok(Some(batch))
    }

    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        let config: Config = wasmpipe_sdk::config()?;
        wasmpipe_sdk::numeric(input, &config.columns)?;
        Ok(Some(config.columns.iter().fold(input.to_vec(), |s, c| wasmpipe_sdk::with_field(&s, c, DataType::Float64))))
    }
}

wasmpipe_sdk::export_estimator!(Scaler, Model);

#[cfg(test)]
mod tests {
    use super::Moments;

    fn moments(xs: &[f64]) -> Moments {
        let mut m = Moments::default();
        xs.iter().for_each(|&x| m.push(x));
        m
    }

    #[test]
    fn merged_moments_equal_one_pass_moments() {
        let xs: Vec<f64> = (0..1000).map(|i| ((i * 7919) % 1000) as f64 * 0.37 + 1e6).collect();
        let whole = moments(&xs);
        let merged = xs.chunks(77).map(moments).fold(Moments::default(), Moments::merge);
        assert_eq!(merged.n, whole.n);
        assert!((merged.mean - whole.mean).abs() < 1e-9 * whole.mean.abs());
        assert!((merged.m2 - whole.m2).abs() < 1e-9 * whole.m2);
    }

    #[test]
    fn empty_partitions_merge_as_identity() {
        let m = moments(&[1.0, 2.0, 4.0]);
        let left = Moments::merge(Moments::default(), m);
        let right = Moments::merge(m, Moments::default());
        for r in [left, right] {
            assert_eq!((r.n, r.mean, r.m2), (m.n, m.mean, m.m2));
        }
    }
}

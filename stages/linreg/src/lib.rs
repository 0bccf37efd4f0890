//! Linear regression (estimator) by the normal equations: each partition
//! accumulates X^T X and X^T y (with an intercept column), partials add up,
//! and the merged system is solved by Cholesky factorization. An optional
//! ridge term `alpha` penalizes the coefficients but not the intercept, as
//! scikit-learn's `Ridge`. Transform appends the prediction column.
//!
//! ```toml
//! [stage.fit.config]
//! features = ["age", "bmi"]
//! target = "target"
//! prediction = "prediction"   # default
//! alpha = 0.0                 # default
//! ```
//!
//! Rows with a null or NaN in any feature or the target are skipped when
//! fitting; their prediction is null.

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Batch, Column, Estimator, Outcome, Predictor, Result, Task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    features: Vec<String>,
    target: String,
    #[serde(default = "default_prediction")]
    prediction: String,
    #[serde(default)]
    alpha: f64,
}

fn default_prediction() -> String {
    "prediction".into()
}

/// Partial normal equations over `[1, x_1 .. x_p]`.
#[derive(Serialize, Deserialize)]
struct State {
    rows: u64,
    /// Row-major (p+1) x (p+1).
    xtx: Vec<f64>,
    xty: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
struct Model {
    features: Vec<String>,
    prediction: String,
    intercept: f64,
    coefficients: Vec<f64>,
    rows: u64,
}

/// Read the feature columns (as f64) and a row-validity mask.
fn features(batch: &Batch, names: &[String]) -> Result<(Vec<Vec<f64>>, Vec<bool>)> {
    let rows = batch.num_rows() as usize;
    let mut valid = vec![true; rows];
    let mut cols = Vec::with_capacity(names.len());
    for name in names {
        let values = batch.f64s(name)?;
        for (v, x) in valid.iter_mut().zip(&values) {
            *v &= x.is_finite();
        }
        cols.push(values);
    }
    Ok((cols, valid))
}

struct LinReg;

impl Estimator for LinReg {
    type State = State;
    type Carry = ();
    type Model = Model;

    fn begin(_task: &Task, _carry: Option<()>) -> Result<State> {
        let config: Config = wasmpipe_sdk::config()?;
        let k = config.features.len() + 1;
        Ok(State { rows: 0, xtx: vec![0.0; k * k], xty: vec![0.0; k] })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let config: Config = wasmpipe_sdk::config()?;
        let (x, mut valid) = features(batch, &config.features)?;
        let y = batch.f64s(&config.target)?;
        for (v, t) in valid.iter_mut().zip(&y) {
            *v &= t.is_finite();
        }
        let k = x.len() + 1;
        let mut row = vec![1.0; k];
        for i in 0..y.len() {
            if !valid[i] {
                continue;
            }
            for (j, col) in x.iter().enumerate() {
                row[j + 1] = col[i];
            }
            for (a, &ra) in row.iter().enumerate() {
                state.xty[a] += ra * y[i];
                for (b, &rb) in row.iter().enumerate().skip(a) {
                    state.xtx[a * k + b] += ra * rb;
                }
            }
            state.rows += 1;
        }
        Ok(())
    }

    fn merge(mut left: State, right: State) -> Result<State> {
        left.rows += right.rows;
        left.xtx.iter_mut().zip(right.xtx).for_each(|(a, b)| *a += b);
        left.xty.iter_mut().zip(right.xty).for_each(|(a, b)| *a += b);
        Ok(left)
    }

    fn finalize(mut state: State, _pass: u32) -> Result<Outcome<Model, ()>> {
        let config: Config = wasmpipe_sdk::config()?;
        let k = state.xty.len();
        if (state.rows as usize) < k && config.alpha == 0.0 {
            wasmpipe_sdk::fail!(
                "{} usable rows cannot determine {} coefficients; add rows or set alpha > 0",
                state.rows,
                k
            );
        }
        // Mirror the upper triangle and add the ridge term (not on the intercept).
        for a in 0..k {
            for b in 0..a {
                state.xtx[a * k + b] = state.xtx[b * k + a];
            }
            if a > 0 {
                state.xtx[a * k + a] += config.alpha;
            }
        }
        let beta = solve_spd(state.xtx, state.xty, k)?;
        wasmpipe_sdk::info!("fitted {} coefficients on {} rows", k - 1, state.rows);
        Ok(Outcome::Done(Model {
            features: config.features,
            prediction: config.prediction,
            intercept: beta[0],
            coefficients: beta[1..].to_vec(),
            rows: state.rows,
        }))
    }
}

/// Solve A x = b for symmetric positive definite A (row-major k x k) by
/// Cholesky decomposition.
fn solve_spd(mut a: Vec<f64>, mut b: Vec<f64>, k: usize) -> Result<Vec<f64>> {
    for j in 0..k {
        let mut d = a[j * k + j];
        for p in 0..j {
            d -= a[j * k + p] * a[j * k + p];
        }
        if d <= 0.0 || !d.is_finite() {
            wasmpipe_sdk::fail!(
                "the features are collinear (X^T X is singular at column {j}); drop a redundant feature or set alpha > 0"
            );
        }
        let d = d.sqrt();
        a[j * k + j] = d;
        for i in j + 1..k {
            let mut s = a[i * k + j];
            for p in 0..j {
                s -= a[i * k + p] * a[j * k + p];
            }
            a[i * k + j] = s / d;
        }
    }
    // Forward substitution L z = b, then back substitution L^T x = z.
    for i in 0..k {
        let mut s = b[i];
        for p in 0..i {
            s -= a[i * k + p] * b[p];
        }
        b[i] = s / a[i * k + i];
    }
    for i in (0..k).rev() {
        let mut s = b[i];
        for p in i + 1..k {
            s -= a[p * k + i] * b[p];
        }
        b[i] = s / a[i * k + i];
    }
    Ok(b)
}

struct Predict(Model);

impl Predictor for Predict {
    type Model = Model;

    fn open(_task: &Task, model: Model) -> Result<Self> {
        Ok(Predict(model))
    }

    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
        let m = &self.0;
        let (x, valid) = features(&batch, &m.features)?;
        let mut yhat = vec![m.intercept; valid.len()];
        for (col, beta) in x.iter().zip(&m.coefficients) {
            for (p, v) in yhat.iter_mut().zip(col) {
                *p += beta * v;
            }
        }
        let validity = if valid.iter().all(|v| *v) { None } else { Some(valid) };
        Ok(Some(batch.with_column(&m.prediction, &Column::from_f64(&yhat, validity.as_deref())?)?))
    }
}

wasmpipe_sdk::export_estimator!(LinReg, Predict);

#[cfg(test)]
mod tests {
    use super::solve_spd;

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2, 0], [2, 5, 1], [0, 1, 3]], x = [1, -2, 3]
        let a = vec![4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let b = vec![0.0, -5.0, 7.0];
        let x = solve_spd(a, b, 3).unwrap();
        for (got, want) in x.iter().zip([1.0, -2.0, 3.0]) {
            assert!((got - want).abs() < 1e-12, "{x:?}");
        }
    }

    #[test]
    fn a_singular_system_is_an_error_not_nan() {
        let a = vec![1.0, 1.0, 1.0, 1.0];
        assert!(solve_spd(a, vec![1.0, 1.0], 2).is_err());
    }
}

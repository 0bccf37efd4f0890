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
//! Rows with a null, NaN or infinity in any feature or the target are
//! skipped when fitting. A row with a null feature gets a null prediction
//! (a NaN feature, a NaN one). Fitting and prediction run on native host
//! kernels (`gram`, `matvec`): no column values are copied into the sandbox.

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Apply, Batch, Column, DataType, Estimator, Field, Outcome, Result, Schema, Task};

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

fn config() -> Result<Config> {
    let config: Config = wasmpipe_sdk::config()?;
    if config.features.contains(&config.target) {
        return Err(wasmpipe_sdk::Error::InvalidConfig(format!(
            "features: lists the target {:?}, which would predict itself (with a column selector: exclude = [{:?}])",
            config.target, config.target
        )));
    }
    if config.features.contains(&config.prediction) || config.prediction == config.target {
        return Err(wasmpipe_sdk::Error::InvalidConfig(format!(
            "prediction: {:?} is a feature or the target, which the prediction would overwrite; name a new column",
            config.prediction
        )));
    }
    Ok(config)
}

/// Partial normal equations over `[1, x_1 .. x_p]` (X^T X row-major).
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

/// The named columns of `batch`, as handles.
fn columns(batch: &Batch, names: &[String]) -> Result<Vec<Column>> {
    names.iter().map(|n| batch.column(n)).collect()
}

struct LinReg;

impl Estimator for LinReg {
    type State = State;
    type Carry = ();
    type Model = Model;

    fn begin(_task: &Task, _carry: Option<()>) -> Result<State> {
        let config = config()?;
        let k = config.features.len() + 1;
        Ok(State { rows: 0, xtx: vec![0.0; k * k], xty: vec![0.0; k] })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let config = config()?;
        let x = columns(batch, &config.features)?;
        let y = batch.column(&config.target)?;
        // X^T X and X^T y computed natively in the host, over the rows
        // where every value is present and finite.
        let g = wasmpipe_sdk::gram(&x.iter().collect::<Vec<_>>(), &y, true)?;
        state.rows += g.rows;
        state.xtx.iter_mut().zip(g.xtx).for_each(|(a, b)| *a += b);
        state.xty.iter_mut().zip(g.xty).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn merge(mut left: State, right: State) -> Result<State> {
        left.rows += right.rows;
        left.xtx.iter_mut().zip(right.xtx).for_each(|(a, b)| *a += b);
        left.xty.iter_mut().zip(right.xty).for_each(|(a, b)| *a += b);
        Ok(left)
    }

    fn finalize(mut state: State, _pass: u32) -> Result<Outcome<Model, ()>> {
        let config = config()?;
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

/// Solve the normal equations, naming the collinear column on failure.
fn solve_spd(a: Vec<f64>, b: Vec<f64>, k: usize) -> Result<Vec<f64>> {
    match wasmpipe_sdk::solve_spd(a, b, k) {
        Ok(x) => Ok(x),
        Err(j) => wasmpipe_sdk::fail!(
            "the features are collinear (X^T X is singular at column {j}); drop a redundant feature or set alpha > 0"
        ),
    }
}

impl Apply for Model {
    fn apply(&self, batch: Batch) -> Result<Option<Batch>> {
        let x = columns(&batch, &self.features)?;
        let yhat = wasmpipe_sdk::matvec(&x.iter().collect::<Vec<_>>(), &self.coefficients, self.intercept)?;
        Ok(Some(batch.with_column(&self.prediction, &yhat)?))
    }

    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        let config = config()?;
        wasmpipe_sdk::numeric(input, &config.features)?;
        Ok(Some(wasmpipe_sdk::with_field(input, &config.prediction, DataType::Float64)))
    }
}

wasmpipe_sdk::export_estimator!(LinReg, Model);

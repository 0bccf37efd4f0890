//! `{{name}}`, a wasmpipe estimator: it fits the mean of each of `columns`
//! over every row, then subtracts it (mean centering).
//!
//! ```toml
//! [stage.{{name}}.config]
//! columns = ["x", "y"]
//! ```
//!
//! The fit runs in parallel: each partition sums its rows (`begin`,
//! `update`), the partial states are merged (`merge`, in any order and
//! grouping), and `finalize` turns the merged state into the model (or
//! asks for another pass over the data, for iterative methods). The model
//! is then applied to every partition (`Apply`). The sums and the
//! subtraction run in the host (kernels): the values never enter the
//! sandbox. `output_schema` says, before the model exists, what the stage
//! writes, so the stages after it are checked against their columns before
//! any data moves. Replace them with what your estimator does.

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Apply, Batch, DataType, Estimator, Field, Outcome, Result, Schema, Task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)] // a misspelt key is an error that names it
struct Config {
    columns: Vec<String>,
}

/// One partition's (or several merged partitions') partial fit.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct State {
    columns: Vec<String>,
    /// Non-null, non-NaN values per column.
    counts: Vec<u64>,
    sums: Vec<f64>,
}

impl State {
    fn merge(mut self, other: State) -> State {
        for (i, (n, s)) in other.counts.into_iter().zip(other.sums).enumerate() {
            self.counts[i] += n;
            self.sums[i] += s;
        }
        self
    }
}

/// The fitted model: what `transform` applies, kept in the model registry.
#[derive(Serialize, Deserialize, Debug)]
struct Model {
    columns: Vec<String>,
    means: Vec<f64>,
}

struct Stage;

impl Estimator for Stage {
    type State = State;
    type Carry = ();
    type Model = Model;

    fn begin(_task: &Task, _carry: Option<()>) -> Result<State> {
        let config: Config = wasmpipe_sdk::config()?;
        let n = config.columns.len();
        Ok(State { columns: config.columns, counts: vec![0; n], sums: vec![0.0; n] })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        for (i, name) in state.columns.iter().enumerate() {
            let s = batch.column(name)?.summarize()?;
            state.counts[i] += s.count;
            state.sums[i] += s.sum;
        }
        Ok(())
    }

    fn merge(left: State, right: State) -> Result<State> {
        Ok(left.merge(right))
    }

    fn finalize(state: State, _pass: u32) -> Result<Outcome<Model, ()>> {
        let mut means = Vec::new();
        for ((name, n), sum) in state.columns.iter().zip(&state.counts).zip(&state.sums) {
            if *n == 0 {
                wasmpipe_sdk::fail!("column {name:?} has no values to fit");
            }
            means.push(sum / *n as f64);
        }
        wasmpipe_sdk::info!("means: {means:?}");
        Ok(Outcome::Done(Model { columns: state.columns, means }))
    }
}

impl Apply for Model {
    fn apply(&self, mut batch: Batch) -> Result<Option<Batch>> {
        for (name, mean) in self.columns.iter().zip(&self.means) {
            let centered = batch.column(name)?.sub_scalar(*mean)?;
            batch = batch.with_column(name, &centered)?;
        }
        Ok(Some(batch))
    }

    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        let config: Config = wasmpipe_sdk::config()?;
        // Each column must be there and hold numbers; it comes out as f64.
        wasmpipe_sdk::numeric(input, &config.columns)?;
        let f64s = |schema: Schema, name: &String| wasmpipe_sdk::with_field(&schema, name, DataType::Float64);
        Ok(Some(config.columns.iter().fold(input.to_vec(), f64s)))
    }
}

wasmpipe_sdk::export_estimator!(Stage, Model);

#[cfg(test)]
mod tests {
    use super::*;

    fn state(values: &[f64]) -> State {
        State { columns: vec!["x".into()], counts: vec![values.len() as u64], sums: vec![values.iter().sum()] }
    }

    #[test]
    fn merged_partials_are_the_whole() {
        let whole = state(&[1.0, 2.0, 3.0, 4.0]);
        let merged = state(&[1.0]).merge(state(&[2.0, 3.0])).merge(state(&[4.0]));
        assert_eq!(merged, whole);
    }
}

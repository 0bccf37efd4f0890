//! `{{name}}`, a wasmpipe aggregator: it summarizes a column over every
//! row (rows, mean, minimum, maximum) into one result, the stage's
//! report.
//!
//! ```toml
//! [stage.{{name}}.config]
//! column = "x"
//! ```
//!
//! An aggregator is the fit half of an estimator: each partition folds its
//! rows into a partial state in parallel, the states are merged, and
//! `finalize` turns the merged state into the result (here a JSON
//! document, also published as the stage's report). The summaries run in
//! the host (kernels). Replace them with what your aggregator computes.

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Batch, Estimator, Outcome, Result, Task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)] // a misspelt key is an error that names it
struct Config {
    column: String,
}

/// One partition's (or several merged partitions') partial result.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct State {
    column: String,
    rows: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl State {
    fn merge(self, other: State) -> State {
        State {
            column: self.column,
            rows: self.rows + other.rows,
            sum: self.sum + other.sum,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }
}

/// The result.
#[derive(Serialize, Deserialize, Debug)]
struct Summary {
    column: String,
    rows: u64,
    mean: f64,
    min: f64,
    max: f64,
}

struct Stage;

impl Estimator for Stage {
    type State = State;
    type Carry = ();
    type Model = Summary;

    fn begin(_task: &Task, _carry: Option<()>) -> Result<State> {
        let config: Config = wasmpipe_sdk::config()?;
        Ok(State { column: config.column, rows: 0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let s = batch.column(&state.column)?.summarize()?;
        state.rows += s.count;
        state.sum += s.sum;
        state.min = state.min.min(s.min);
        state.max = state.max.max(s.max);
        Ok(())
    }

    fn merge(left: State, right: State) -> Result<State> {
        Ok(left.merge(right))
    }

    fn finalize(state: State, _pass: u32) -> Result<Outcome<Summary, ()>> {
        if state.rows == 0 {
            wasmpipe_sdk::fail!("column {:?} has no values to summarize", state.column);
        }
        let summary = Summary {
            mean: state.sum / state.rows as f64,
            column: state.column,
            rows: state.rows,
            min: state.min,
            max: state.max,
        };
        wasmpipe_sdk::info!("{}: {} rows, mean {}", summary.column, summary.rows, summary.mean);
        wasmpipe_sdk::report(&summary, None)?;
        Ok(Outcome::Done(summary))
    }
}

wasmpipe_sdk::export_aggregator!(Stage);

#[cfg(test)]
mod tests {
    use super::*;

    fn state(values: &[f64]) -> State {
        State {
            column: "x".into(),
            rows: values.len() as u64,
            sum: values.iter().sum(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    #[test]
    fn merged_partials_are_the_whole() {
        let merged = state(&[3.0]).merge(state(&[1.0, 5.0])).merge(state(&[]));
        assert_eq!(merged, state(&[3.0, 1.0, 5.0]));
    }
}

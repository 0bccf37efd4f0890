//! Min-max scaler (estimator): learns each column's minimum and maximum and
//! maps x to `x * scale + offset`, where `scale = (b - a) / (max - min)` and
//! `offset = a - min * scale`, into the range `[a, b]` (default `[0, 1]`),
//! as scikit-learn's `MinMaxScaler` (same formula, same order of
//! operations). A constant column (`max == min`) gets `scale = b - a`, as
//! scikit-learn's zero-range handling does (so every row maps to `a`).
//!
//! ```toml
//! [stage.minmax.config]
//! columns = ["age", "bmi"]
//! feature_range = [0.0, 1.0]   # default
//! clip = false                 # default; true clamps transformed values to the range (scikit-learn's `clip`)
//! ```
//!
//! Nulls and NaN are skipped when fitting (as scikit-learn does) and stay
//! null or NaN. A column with no values fails the fit, naming it.
//!
//! # Math and where it runs
//!
//! Fit: the `summarize` kernel's `min`/`max` per batch; partition states
//! merge by `min`/`max`, which is exact, so the model does not depend on
//! partitioning at all. Transform: `mul_scalar`, `add_scalar` (and `clamp`
//! with `clip`) kernels. No column values are copied into the sandbox.
//!
//! # Model
//!
//! JSON: `columns`, `data_min`, `data_max`, `scale`, `offset` (one per
//! column; scikit-learn's `data_min_`, `data_max_`, `scale_`, `min_`),
//! `feature_range` and `clip`.

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Apply, Batch, DataType, Error, Estimator, Field, Outcome, Result, Schema, Task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    columns: Vec<String>,
    #[serde(default = "unit")]
    feature_range: [f64; 2],
    #[serde(default)]
    clip: bool,
}

fn unit() -> [f64; 2] {
    [0.0, 1.0]
}

fn config() -> Result<Config> {
    let config: Config = wasmpipe_sdk::config()?;
    let [a, b] = config.feature_range;
    if !(a.is_finite() && b.is_finite() && a < b) {
        return Err(Error::InvalidConfig(format!("feature_range: [{a}, {b}] must be finite with min < max")));
    }
    if config.columns.is_empty() {
        return Err(Error::InvalidConfig("columns: name at least one column".into()));
    }
    Ok(config)
}

/// Extremes of one column's counted values; `n = 0` when none yet.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
struct Range {
    n: u64,
    min: f64,
    max: f64,
}

impl Range {
    const EMPTY: Range = Range { n: 0, min: f64::INFINITY, max: f64::NEG_INFINITY };

    fn merge(a: Range, b: Range) -> Range {
        if b.n == 0 {
            return a;
        }
        if a.n == 0 {
            return b;
        }
        Range { n: a.n + b.n, min: a.min.min(b.min), max: a.max.max(b.max) }
    }
}

#[derive(Serialize, Deserialize)]
struct State {
    ranges: Vec<Range>,
}

#[derive(Serialize, Deserialize)]
struct Model {
    columns: Vec<String>,
    data_min: Vec<f64>,
    data_max: Vec<f64>,
    scale: Vec<f64>,
    offset: Vec<f64>,
    feature_range: [f64; 2],
    clip: bool,
}

/// scikit-learn's `scale_` and `min_` for a range `[min, max]` into `[a, b]`.
fn scale_offset(min: f64, max: f64, [a, b]: [f64; 2]) -> (f64, f64) {
    let range = max - min;
    let range = if range == 0.0 { 1.0 } else { range };
    let scale = (b - a) / range;
    (scale, a - min * scale)
}

struct MinMax;

impl Estimator for MinMax {
    type State = State;
    type Carry = ();
    type Model = Model;

    fn begin(_task: &Task, _carry: Option<()>) -> Result<State> {
        Ok(State { ranges: vec![Range::EMPTY; config()?.columns.len()] })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let config = config()?;
        for (name, r) in config.columns.iter().zip(&mut state.ranges) {
            let s = batch.column(name)?.summarize()?;
            if s.count > 0 {
                *r = Range::merge(*r, Range { n: s.count, min: s.min, max: s.max });
            }
        }
        Ok(())
    }

    fn merge(mut left: State, right: State) -> Result<State> {
        left.ranges.iter_mut().zip(right.ranges).for_each(|(l, r)| *l = Range::merge(*l, r));
        Ok(left)
    }

    fn finalize(state: State, _pass: u32) -> Result<Outcome<Model, ()>> {
        let config = config()?;
        if let Some((name, _)) = config.columns.iter().zip(&state.ranges).find(|(_, r)| r.n == 0) {
            wasmpipe_sdk::fail!("column {name:?} has no non-null, non-NaN values to fit");
        }
        let (scale, offset) = state.ranges.iter().map(|r| scale_offset(r.min, r.max, config.feature_range)).unzip();
        Ok(Outcome::Done(Model {
            columns: config.columns,
            data_min: state.ranges.iter().map(|r| r.min).collect(),
            data_max: state.ranges.iter().map(|r| r.max).collect(),
            scale,
            offset,
            feature_range: config.feature_range,
            clip: config.clip,
        }))
    }
}

impl Apply for Model {
    fn apply(&self, mut batch: Batch) -> Result<Option<Batch>> {
        for (i, name) in self.columns.iter().enumerate() {
            // x * scale + offset, in the host: scikit-learn's order of operations.
            let mut x = batch.column(name)?.mul_scalar(self.scale[i])?.add_scalar(self.offset[i])?;
            if self.clip {
                x = x.clamp(self.feature_range[0], self.feature_range[1])?;
            }
            batch = batch.with_column(name, &x)?;
        }
        Ok(Some(batch))
    }

    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        let config = config()?;
        wasmpipe_sdk::numeric(input, &config.columns)?;
        Ok(Some(config.columns.iter().fold(input.to_vec(), |s, c| wasmpipe_sdk::with_field(&s, c, DataType::Float64))))
    }
}

wasmpipe_sdk::export_estimator!(MinMax, Model);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_exactly_and_empty_is_identity() {
        let a = Range { n: 2, min: -1.0, max: 3.0 };
        let b = Range { n: 5, min: 0.5, max: 7.0 };
        assert_eq!(Range::merge(a, b), Range { n: 7, min: -1.0, max: 7.0 });
        assert_eq!(Range::merge(Range::EMPTY, a), a);
        assert_eq!(Range::merge(a, Range::EMPTY), a);
    }

    #[test]
    fn scale_maps_the_extremes_to_the_range() {
        let (s, o) = scale_offset(2.0, 10.0, [-1.0, 1.0]);
        assert_eq!((2.0 * s + o, 10.0 * s + o), (-1.0, 1.0));
        // A constant column maps to the low end, as scikit-learn's does.
        let (s, o) = scale_offset(4.0, 4.0, [0.0, 1.0]);
        assert_eq!((s, 4.0 * s + o), (1.0, 0.0));
    }
}

//! Cleaning transformer: drops rows that have a null in the checked columns
//! or a value outside a configured range, and logs how many went where.
//!
//! ```toml
//! [stage.clean.config]
//! not_null = ["age", "bmi"]          # default: every column
//! ranges = { age = { min = 0, max = 120 } }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmpipe_sdk::{Batch, Result, Task, Transformer};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Columns that must not be null; `None` means every column.
    not_null: Option<Vec<String>>,
    /// Inclusive bounds per numeric column; NaN is out of every range.
    #[serde(default)]
    ranges: BTreeMap<String, Range>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    min: Option<f64>,
    max: Option<f64>,
}

struct Clean {
    config: Config,
    rows_in: u64,
    dropped_null: u64,
    dropped_range: u64,
}

impl Transformer for Clean {
    fn open(_task: &Task) -> Result<Self> {
        Ok(Clean { config: wasmpipe_sdk::config()?, rows_in: 0, dropped_null: 0, dropped_range: 0 })
    }

    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
        let rows = batch.num_rows() as usize;
        self.rows_in += rows as u64;
        let mut keep = vec![true; rows];

        let not_null = match &self.config.not_null {
            Some(cols) => cols.clone(),
            None => batch.column_names(),
        };
        for name in &not_null {
            let column = batch.column(name)?;
            if column.null_count() == 0 {
                continue;
            }
            for (k, null) in keep.iter_mut().zip(column.null_mask()) {
                if *k && null {
                    *k = false;
                    self.dropped_null += 1;
                }
            }
        }

        for (name, range) in &self.config.ranges {
            let values = batch.f64s(name)?;
            let lo = range.min.unwrap_or(f64::NEG_INFINITY);
            let hi = range.max.unwrap_or(f64::INFINITY);
            for (k, v) in keep.iter_mut().zip(values) {
                // NaN fails both comparisons, so it is out of range.
                if *k && !(v >= lo && v <= hi) {
                    *k = false;
                    self.dropped_range += 1;
                }
            }
        }

        if keep.iter().all(|k| *k) {
            return Ok(Some(batch));
        }
        Ok(Some(batch.filter_rows(&keep)?))
    }

    fn close(&mut self) -> Result<Option<Batch>> {
        let dropped = self.dropped_null + self.dropped_range;
        wasmpipe_sdk::info!(
            "kept {} of {} rows; dropped {} with nulls, {} out of range",
            self.rows_in - dropped,
            self.rows_in,
            self.dropped_null,
            self.dropped_range
        );
        Ok(None)
    }
}

wasmpipe_sdk::export_transformer!(Clean);

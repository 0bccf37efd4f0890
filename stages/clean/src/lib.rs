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
use wasmpipe_sdk::{Batch, Column, Compare, Result, Task, Transformer};

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

/// Rows where `mask` is true (booleans sum as 0/1; nulls are skipped).
fn count(mask: &Column) -> Result<u64> {
    Ok(mask.summarize()?.sum as u64)
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
        let rows = batch.num_rows();
        self.rows_in += rows;

        // Masks are built in the host from the column handles; the stage
        // only counts and filters.
        let not_null = match &self.config.not_null {
            Some(cols) => cols.clone(),
            None => batch.column_names(),
        };
        let mut has_null: Option<Column> = None;
        for name in &not_null {
            let column = batch.column(name)?;
            if column.null_count() == 0 {
                continue;
            }
            let nulls = column.is_null();
            has_null = Some(match has_null {
                Some(m) => m.or(&nulls)?,
                None => nulls,
            });
        }

        let mut in_range: Option<Column> = None;
        for (name, range) in &self.config.ranges {
            let column = batch.column(name)?;
            // A null is out of range, and so is NaN (it compares false).
            let mut ok = column.is_null().not()?;
            if let Some(lo) = range.min {
                ok = ok.and(&column.compare(Compare::Ge, lo)?)?;
            }
            if let Some(hi) = range.max {
                ok = ok.and(&column.compare(Compare::Le, hi)?)?;
            }
            in_range = Some(match in_range {
                Some(m) => m.and(&ok)?,
                None => ok,
            });
        }

        let dropped_null = match &has_null {
            Some(m) => count(m)?,
            None => 0,
        };
        let keep = match (&has_null, &in_range) {
            (None, None) => return Ok(Some(batch)),
            (Some(n), None) => n.not()?,
            (None, Some(r)) => r.and(&r.is_null().not()?)?,
            (Some(n), Some(r)) => n.not()?.and(r)?,
        };
        let kept = count(&keep)?;
        self.dropped_null += dropped_null;
        self.dropped_range += rows - kept - dropped_null;
        if kept == rows {
            return Ok(Some(batch));
        }
        Ok(Some(batch.filter(&keep)?))
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

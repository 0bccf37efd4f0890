//! `{{name}}`, a wasmpipe transformer: it clips a column into `[lo, hi]`,
//! one batch at a time, in parallel over the partitions of its input.
//!
//! ```toml
//! [stage.{{name}}.config]
//! column = "x"
//! lo = 0.0
//! hi = 1.0
//! ```
//!
//! The clipping runs in the host (the `clamp` kernel): the values never
//! enter the sandbox. Replace it with what your stage does.

use serde::Deserialize;
use wasmpipe_sdk::{Batch, Result, Task, Transformer};

/// The stage's configuration: `[stage.NAME.config]` in the manifest.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)] // a misspelt key is an error that names it
struct Config {
    column: String,
    lo: f64,
    hi: f64,
}

impl Config {
    /// What serde cannot check.
    fn checked(self) -> Result<Config> {
        if self.lo > self.hi || self.lo.is_nan() || self.hi.is_nan() {
            wasmpipe_sdk::fail!("lo ({}) must be a number not above hi ({})", self.lo, self.hi);
        }
        Ok(self)
    }
}

struct Stage {
    config: Config,
}

impl Transformer for Stage {
    fn open(task: &Task) -> Result<Self> {
        let config = wasmpipe_sdk::config::<Config>()?.checked()?;
        wasmpipe_sdk::debug!("partition {}: clipping {:?} into [{}, {}]", task.partition, config.column, config.lo, config.hi);
        Ok(Stage { config })
    }

    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
        let Config { column, lo, hi } = &self.config;
        let clipped = batch.column(column)?.clamp(*lo, *hi)?;
        Ok(Some(batch.with_column(column, &clipped)?))
    }
}

wasmpipe_sdk::export_transformer!(Stage);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> std::result::Result<Config, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        config.checked().map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn the_config_is_checked() {
        assert!(config(r#"{"column": "x", "lo": 0, "hi": 1}"#).is_ok());
        assert!(config(r#"{"column": "x", "lo": 2, "hi": 1}"#).unwrap_err().contains("not above hi"));
        assert!(config(r#"{"column": "x", "lo": 0, "hi": 1, "hj": 2}"#).unwrap_err().contains("hj"));
    }
}

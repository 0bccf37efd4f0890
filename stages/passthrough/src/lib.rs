//! Identity stage: every batch out as it came in. Used for ingestion (the
//! host parses CSV, JSON Lines or Parquet, the stage forwards it, the host commits
//! Parquet) and to test the data plane.

use wasmpipe_sdk::{Batch, Result, Task, Transformer};

struct Passthrough;

impl Transformer for Passthrough {
    fn open(_task: &Task) -> Result<Self> {
        let _: Empty = wasmpipe_sdk::config()?;
        Ok(Passthrough)
    }

    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
        Ok(Some(batch))
    }
}

/// Passthrough takes no settings; any key is a mistake.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

wasmpipe_sdk::export_transformer!(Passthrough);

//! Feature hashing (transformer): maps the values of the listed columns
//! (strings, or any hashable type) into `n_features` float64 columns
//! `<prefix>_0 .. <prefix>_{n-1}`, the hashing trick of scikit-learn's
//! `FeatureHasher` (with xxh3 instead of MurmurHash3, so the buckets are
//! not scikit-learn's).
//!
//! ```toml
//! [stage.hash.config]
//! columns = ["city", "browser"]
//! n_features = 32         # 1 to 4096
//! seed = 0                # default
//! alternate_sign = true   # default, as scikit-learn's
//! prefix = "hash"         # default
//! keep_original = false   # default: the hashed columns are dropped
//! ```
//!
//! # Math
//!
//! The value of column `j` (0-based, in the listed order) is hashed with
//! the `hash_rows` kernel (xxh3) seeded with `seed + j`, so an equal value
//! in two columns lands in independent buckets; with `u = h * 2^-64` (f64),
//! its bucket is `min(floor(u n), n - 1)`. With `alternate_sign` its sign
//! is `+1` when a second hash (seed `seed + j + 2^32`) gives `u' < 0.5`,
//! else `-1`, so collisions cancel in expectation. Feature `i` of a row is
//! the sum of the signs of its values that fall in bucket `i`. The same
//! value always gets the same bucket and sign, on every partition, machine
//! and run. A null value contributes nothing.
//!
//! # Where it runs
//!
//! Hashing is a kernel; the bucket and sign arithmetic is a loop in the
//! guest over the copied `u` values (there is no integer modulo kernel),
//! and the features go back with `from_f64`. The output is dense, hence the
//! cap on `n_features`.

use serde::Deserialize;
use wasmpipe_sdk::{Batch, Column, Error, Result, Task, Transformer};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    columns: Vec<String>,
    n_features: usize,
    #[serde(default)]
    seed: u64,
    #[serde(default = "yes")]
    alternate_sign: bool,
    #[serde(default = "hash")]
    prefix: String,
    #[serde(default)]
    keep_original: bool,
}

fn yes() -> bool {
    true
}

fn hash() -> String {
    "hash".into()
}

/// The bucket of `u` in `[0, 1]` among `n`.
fn bucket(u: f64, n: usize) -> usize {
    ((u * n as f64) as usize).min(n - 1)
}

/// `u = hash * 2^-64` of one column, seeded.
fn uniforms(x: &Column, seed: u64) -> Result<Vec<f64>> {
    wasmpipe_sdk::hash_rows(&[x], seed)?.mul_scalar(2f64.powi(-64))?.read_f64()
}

struct Hasher(Config);

impl Transformer for Hasher {
    fn open(_task: &Task) -> Result<Self> {
        let config: Config = wasmpipe_sdk::config()?;
        if !(1..=4096).contains(&config.n_features) {
            return Err(Error::InvalidConfig(format!("n_features: 1 to 4096, got {}", config.n_features)));
        }
        if config.columns.is_empty() {
            return Err(Error::InvalidConfig("columns: name at least one column".into()));
        }
        Ok(Hasher(config))
    }

    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
        let c = &self.0;
        let rows = batch.num_rows() as usize;
        let mut features = vec![vec![0.0; rows]; c.n_features];
        for (j, name) in c.columns.iter().enumerate() {
            let x = batch.column(name)?;
            let seed = c.seed.wrapping_add(j as u64);
            let u = uniforms(&x, seed)?;
            let signs = if c.alternate_sign { Some(uniforms(&x, seed.wrapping_add(1 << 32))?) } else { None };
            let valid = x.validity();
            for i in 0..rows {
                if valid.as_ref().is_some_and(|v| !v[i]) {
                    continue;
                }
                let sign = match &signs {
                    Some(s) if s[i] >= 0.5 => -1.0,
                    _ => 1.0,
                };
                features[bucket(u[i], c.n_features)][i] += sign;
            }
        }
        let mut out = if c.keep_original { batch } else { batch.drop_columns(&c.columns)? };
        for (i, f) in features.iter().enumerate() {
            out = out.with_f64s(&format!("{}_{i}", c.prefix), f)?;
        }
        Ok(Some(out))
    }
}

wasmpipe_sdk::export_transformer!(Hasher);

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_cover_the_range() {
        assert_eq!(bucket(0.0, 8), 0);
        assert_eq!(bucket(0.125, 8), 1);
        assert_eq!(bucket(0.999, 8), 7);
        assert_eq!(bucket(1.0, 8), 7, "u rounds up to 1 for the largest hashes");
        assert_eq!(bucket(0.7, 1), 0);
    }
}

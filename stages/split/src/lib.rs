//! Deterministic train/test(/validation) split (estimator): appends `split`
//! (utf8: `"train"`, `"validation"` or `"test"`) to every row, or with
//! `keep` emits only the rows of one split. The assignment depends only on
//! the row's own values (or its `key`), the `seed` and, with `stratify`, on
//! the whole data set, never on partitioning or parallelism.
//!
//! ```toml
//! [stage.split.config]
//! fractions = { train = 0.8, test = 0.2 }   # or with `validation`; they must add up to 1
//! key = "id"          # optional: hash this column; default: hash all the row's columns
//! seed = 0            # default
//! stratify = "target" # optional: exact proportions within each class
//! keep = "train"      # optional: only the rows of this split (and no `split` column)
//! ```
//!
//! A pipeline branches on the `split` column with named outputs: one split
//! stage, whose every row goes to the output its `split` column names, read
//! as `stage:split.train` by the fit and `stage:split.test` by the
//! evaluation. One pass from one seed: the sides cannot overlap.
//!
//! ```toml
//! [stage.split]
//! component = "stages/split"
//! inputs = ["stage:clean"]
//! outputs = ["train", "test"]   # every row goes to one, by its `split` column
//! route = "split"
//! config = { fractions = { train = 0.8, test = 0.2 }, seed = 7 }
//! ```
//!
//! (`keep` still serves a pipeline that wants one side only.)
//!
//! # Math and guarantees
//!
//! Each row's hash `h` is xxh3 (the `hash_rows` kernel, seeded with `seed`)
//! of `key`, or of all its columns; `u = h * 2^-64` in `[0, 1]`, in f64
//! (the 53 high bits). Splits are ordered train, validation, test, with
//! cumulative fractions `c_1 < c_2 ...`.
//!
//! * Without `stratify`, a row goes to the first split `j` with
//!   `u < c_j`: each row independently, so the proportions hold in
//!   expectation (binomially: within ±2 sqrt(n f (1 - f)) rows about 95% of
//!   the time), and adding rows never moves existing ones. The fit pass does
//!   no work.
//! * With `stratify`, within each class (distinct value of the column; null
//!   is a class of its own) of `n_c` rows, the rows sorted by `u` are cut at
//!   ranks `k_j = round(c_j n_c)`: the first `k_1` rows go to train, the next
//!   `k_2 - k_1` to the next split, and so on. So every split of every class
//!   holds exactly `round(c_j n_c) - round(c_{j-1} n_c)` rows, within one
//!   row of `f_j n_c`, as long as the class's hashes are distinct; rows with
//!   equal hashes (duplicate rows when hashing all columns; give a unique
//!   `key` to avoid it) go to the same split, so a tie at a cut can move the
//!   tied rows by their number. The cut values are the exact order
//!   statistics of `u` per class, found in passes by the shared `quantiles`
//!   crate (pass 0: count, min, max per class; pass 1 collects the values
//!   of classes with at most 65,536 rows, larger ones narrow by histograms).
//!   In transform, a class not seen in the fit falls back to the
//!   unstratified rule.
//!
//! Nulls: a null key hashes as a fixed value (all rows with a null key go
//! to the same split); null cells hash as a fixed marker.
//!
//! # Where it runs
//!
//! The hash is a kernel (`hash_rows`, then `mul_scalar` for `u`). The
//! assignment is a per-row loop in the guest over copied `u` values (and,
//! with `stratify`, the class column copied in: there is no string compare
//! kernel); the `split` column is handed back with `from_utf8`, the `keep`
//! mask with `from_bool`.
//!
//! # Model
//!
//! JSON: `splits` (names in order), `cumulative` (`c_j`),
//! `classes` (with `stratify`: per class key, the rows `n` and the cut
//! values `cuts`, `null` for a cut at `n`, i.e. reached by no row).

use std::collections::BTreeMap;

use quantiles::{Extent, Pass, Search};
use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Batch, Column, DataType, Error, Estimator, Field, Outcome, Predictor, Result, Schema, Task};

const NAMES: [&str; 3] = ["train", "validation", "test"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    fractions: BTreeMap<String, f64>,
    key: Option<String>,
    #[serde(default)]
    seed: u64,
    stratify: Option<String>,
    keep: Option<String>,
}

/// The config, checked: with the split names and cumulative fractions.
fn config() -> Result<(Config, Vec<String>, Vec<f64>)> {
    let config: Config = wasmpipe_sdk::config()?;
    let invalid = |m: String| Err(Error::InvalidConfig(m));
    if let Some(k) = config.fractions.keys().find(|k| !NAMES.contains(&k.as_str())) {
        return invalid(format!("fractions: unknown split {k:?} (train, validation, test)"));
    }
    let mut names = Vec::new();
    let mut cumulative = Vec::new();
    let mut total = 0.0;
    for name in NAMES {
        if let Some(&f) = config.fractions.get(name) {
            if !(f > 0.0 && f <= 1.0) {
                return invalid(format!("fractions: {name} = {f} is not in (0, 1]"));
            }
            total += f;
            names.push(name.to_string());
            cumulative.push(total);
        }
    }
    if names.is_empty() || (total - 1.0).abs() > 1e-9 {
        return invalid(format!("fractions: must name at least one split and add up to 1, not {total}"));
    }
    *cumulative.last_mut().expect("a split") = 1.0;
    if let Some(keep) = &config.keep
        && !names.contains(keep)
    {
        return invalid(format!("keep: {keep:?} is not one of the splits {names:?}"));
    }
    Ok((config, names, cumulative))
}

/// `u = hash * 2^-64` of every row, copied into the guest.
fn uniforms(batch: &Batch, config: &Config) -> Result<Vec<f64>> {
    let columns: Vec<Column> = match &config.key {
        Some(k) => vec![batch.column(k)?],
        None => (0..batch.schema().len() as u32).map(|i| batch.column_at(i)).collect::<Result<_>>()?,
    };
    let refs: Vec<&Column> = columns.iter().collect();
    wasmpipe_sdk::hash_rows(&refs, config.seed)?.mul_scalar(2f64.powi(-64))?.read_f64()
}

/// The class key of every row of the stratify column.
fn classes(batch: &Batch, name: &str) -> Result<Vec<String>> {
    let c = batch.column(name)?;
    Ok(match c.data_type() {
        DataType::Utf8 => c.read_utf8()?.into_iter().map(|v| v.map_or("null".into(), |s| format!("s:{s}"))).collect(),
        _ => {
            let valid = c.validity();
            c.read_f64()?
                .iter()
                .enumerate()
                .map(|(i, v)| match &valid {
                    Some(m) if !m[i] => "null".into(),
                    _ => format!("n:{v:?}"),
                })
                .collect()
        }
    })
}

/// The cut ranks `round(c_j n)` of the inner cuts.
fn cut_ranks(cumulative: &[f64], n: u64) -> Vec<u64> {
    cumulative[..cumulative.len() - 1].iter().map(|c| ((c * n as f64).round() as u64).min(n)).collect()
}

/// The split of a row: the number of cuts at or below `u`.
fn assign(u: f64, cuts: &[Option<f64>]) -> usize {
    cuts.iter().filter(|c| c.is_some_and(|c| u >= c)).count()
}

#[derive(Serialize, Deserialize)]
enum State {
    /// No stratify: nothing to learn.
    Nothing,
    Extents(BTreeMap<String, Extent>),
    Search {
        passes: BTreeMap<String, Pass>,
        n: BTreeMap<String, u64>,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Class {
    n: u64,
    cuts: Vec<Option<f64>>,
}

#[derive(Serialize, Deserialize)]
struct Model {
    splits: Vec<String>,
    cumulative: Vec<f64>,
    classes: BTreeMap<String, Class>,
}

type Carry = (BTreeMap<String, Search>, BTreeMap<String, u64>);

struct Split;

impl Estimator for Split {
    type State = State;
    type Carry = Carry;
    type Model = Model;

    fn begin(_task: &Task, carry: Option<Carry>) -> Result<State> {
        let (config, _, _) = config()?;
        Ok(match (carry, config.stratify) {
            (Some((searches, n)), _) => {
                State::Search { passes: searches.into_iter().map(|(c, s)| (c, Pass::new(s))).collect(), n }
            }
            (None, Some(_)) => State::Extents(BTreeMap::new()),
            (None, None) => State::Nothing,
        })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let (config, _, _) = config()?;
        let Some(stratify) = &config.stratify else { return Ok(()) };
        let (u, class) = (uniforms(batch, &config)?, classes(batch, stratify)?);
        let mut by_class: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for (u, c) in u.iter().zip(&class) {
            by_class.entry(c).or_default().push(*u);
        }
        match state {
            State::Nothing => {}
            State::Extents(extents) => {
                for (c, values) in by_class {
                    let e = extents.entry(c.to_string()).or_default();
                    for v in values {
                        e.add(1, v, v);
                    }
                }
            }
            State::Search { passes, .. } => {
                for (c, values) in by_class {
                    if let Some(p) = passes.get_mut(c) {
                        p.tally_values(&values);
                    }
                }
            }
        }
        Ok(())
    }

    fn merge(left: State, right: State) -> Result<State> {
        Ok(match (left, right) {
            (State::Nothing, State::Nothing) => State::Nothing,
            (State::Extents(mut a), State::Extents(b)) => {
                for (c, e) in b {
                    let x = a.entry(c).or_default();
                    *x = x.merge(e);
                }
                State::Extents(a)
            }
            (State::Search { mut passes, n }, State::Search { passes: more, .. }) => {
                for (c, b) in more {
                    if let Some(a) = passes.remove(&c) {
                        passes.insert(c, a.merge(b));
                    }
                }
                State::Search { passes, n }
            }
            _ => wasmpipe_sdk::fail!("cannot merge states of different passes"),
        })
    }

    fn finalize(state: State, _pass: u32) -> Result<Outcome<Model, Carry>> {
        let (_, splits, cumulative) = config()?;
        let (searches, n) = match state {
            State::Nothing => return Ok(Outcome::Done(Model { splits, cumulative, classes: BTreeMap::new() })),
            State::Extents(extents) => {
                let searches = extents
                    .iter()
                    .map(|(c, e)| {
                        let mut ranks: Vec<u64> =
                            cut_ranks(&cumulative, e.n).into_iter().filter(|&r| r < e.n).collect();
                        ranks.dedup();
                        (c.clone(), e.search(ranks))
                    })
                    .collect();
                (searches, extents.iter().map(|(c, e)| (c.clone(), e.n)).collect::<BTreeMap<_, _>>())
            }
            State::Search { passes, n } => {
                let mut searches = BTreeMap::new();
                for (c, p) in passes {
                    let s = p.step().map_err(|e| Error::StageFailed(format!("class {c}: {e}")))?;
                    searches.insert(c, s);
                }
                (searches, n)
            }
        };
        if !searches.values().all(Search::done) {
            return Ok(Outcome::NextPass((searches, n)));
        }
        let classes = searches
            .iter()
            .map(|(c, s)| {
                let rows = n[c];
                let values = s.values().expect("done");
                let cuts = cut_ranks(&cumulative, rows)
                    .iter()
                    .map(|r| s.ranks.iter().position(|x| x == r).map(|i| values[i]))
                    .collect();
                (c.clone(), Class { n: rows, cuts })
            })
            .collect();
        Ok(Outcome::Done(Model { splits, cumulative, classes }))
    }
}

struct Apply {
    config: Config,
    model: Model,
}

impl Predictor for Apply {
    type Model = Model;

    fn open(_task: &Task, model: Model) -> Result<Self> {
        Ok(Apply { config: config()?.0, model })
    }

    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        let (config, _, _) = config()?;
        for name in config.key.iter().chain(&config.stratify) {
            wasmpipe_sdk::field(input, name)?;
        }
        Ok(Some(match config.keep {
            Some(_) => input.to_vec(),
            None => wasmpipe_sdk::with_field(input, "split", DataType::Utf8),
        }))
    }

    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
        let m = &self.model;
        let u = uniforms(&batch, &self.config)?;
        let plain: Vec<Option<f64>> = m.cumulative[..m.cumulative.len() - 1].iter().map(|&c| Some(c)).collect();
        let split: Vec<usize> = match &self.config.stratify {
            None => u.iter().map(|&u| assign(u, &plain)).collect(),
            Some(name) => classes(&batch, name)?
                .iter()
                .zip(&u)
                .map(|(c, &u)| assign(u, m.classes.get(c).map_or(&plain, |c| &c.cuts)))
                .collect(),
        };
        if let Some(keep) = &self.config.keep {
            let want = m.splits.iter().position(|s| s == keep).expect("checked");
            let mask: Vec<bool> = split.iter().map(|&s| s == want).collect();
            return Ok(Some(batch.filter_rows(&mask)?));
        }
        let labels: Vec<Option<String>> = split.iter().map(|&s| Some(m.splits[s].clone())).collect();
        Ok(Some(batch.with_column("split", &Column::from_utf8(&labels)?)?))
    }
}

wasmpipe_sdk::export_estimator!(Split, Apply);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_round_the_cumulative_counts() {
        assert_eq!(cut_ranks(&[0.8, 1.0], 212), vec![170]);
        assert_eq!(cut_ranks(&[0.6, 0.8, 1.0], 50), vec![30, 40]);
        assert_eq!(cut_ranks(&[0.5, 1.0], 1), vec![1]);
    }

    #[test]
    fn rows_at_or_above_a_cut_go_to_the_next_split() {
        let cuts = [Some(0.3), None];
        assert_eq!((assign(0.1, &cuts), assign(0.3, &cuts), assign(0.99, &cuts)), (0, 1, 1));
        assert_eq!(assign(0.5, &[Some(0.2), Some(0.4)]), 2);
    }

    #[test]
    fn stratified_cuts_give_exact_counts() {
        // 50 distinct uniforms, cut at ranks 30 and 40: 30/10/10.
        let u: Vec<f64> = (0..50).map(|i| ((i * 37) % 50) as f64 / 50.0).collect();
        let mut pass = Pass::new(Search::new(cut_ranks(&[0.6, 0.8, 1.0], 50), 50, 0.0, 49.0 / 50.0));
        pass.tally_values(&u);
        let s = pass.step().unwrap();
        let cuts: Vec<Option<f64>> = s.values().unwrap().into_iter().map(Some).collect();
        let mut counts = [0; 3];
        u.iter().for_each(|&u| counts[assign(u, &cuts)] += 1);
        assert_eq!(counts, [30, 10, 10]);
    }
}

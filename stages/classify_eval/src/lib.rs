//! Classification evaluation (aggregator): accuracy, per-class precision,
//! recall and F1, their macro and weighted averages, the confusion matrix
//! and, when the input has probability columns, the log loss and (for two
//! classes) the ROC AUC, all from mergeable partial counts. The result is a
//! JSON metrics document, also published as the stage's report (JSON, and
//! Parquet rows `metric, class, value`: overall metrics with a null class,
//! per-class ones, and the confusion matrix as `confusion[PREDICTED]` rows
//! per true class); the stage also logs `accuracy = ...`.
//!
//! ```toml
//! [stage.evaluate.config]
//! target = "target"
//! prediction = "prediction"   # default
//! probabilities = "proba_"    # default: the prefix of the probability columns
//! roc_auc = true              # default; false skips the exact ROC AUC (see memory below)
//! ```
//!
//! Classes are integers (integer, boolean or integral float columns) or
//! strings; the target and the prediction must be of the same kind. The
//! probability columns are the input's columns named `<prefix><class>`,
//! e.g. `proba_0` and `proba_1` (as the `logreg` stage writes them). Rows
//! where the target or the prediction is null (or NaN) are not counted.
//!
//! # Metrics (scikit-learn's definitions)
//!
//! * `classes`: the distinct values of target and prediction, sorted;
//!   `confusion_matrix[i][j]`: rows whose target is `classes[i]` and whose
//!   prediction is `classes[j]` (`sklearn.metrics.confusion_matrix`).
//! * `accuracy`: the share of rows with prediction = target.
//! * `precision`, `recall`, `f1`, `support`: per class, in `classes` order
//!   (`precision_recall_fscore_support`): `tp / (tp + fp)`, `tp / (tp + fn)`,
//!   `2 tp / (2 tp + fp + fn)`, `tp + fn`; a ratio with a zero denominator is
//!   0, as scikit-learn's default `zero_division`. `macro`: their plain means;
//!   `weighted`: their means weighted by support.
//! * `log_loss` (with probability columns): the mean over rows of
//!   `-ln p(target)`, with `p` clipped to `[eps, 1 - eps]` (f64 machine
//!   epsilon), as `sklearn.metrics.log_loss` with `labels` = the probability
//!   columns' classes. Each counted row's probabilities must be numbers
//!   summing to 1 (within 1e-8 + sqrt(eps)) and its target must have a
//!   column, else the stage fails, as scikit-learn raises.
//! * `roc_auc` (exactly two probability columns): the area under the ROC
//!   curve of the score `proba_<classes[1]>` for the positive class
//!   `classes[1]` (`roc_auc_score`), exact: the probability that a random
//!   positive scores above a random negative, ties counting one half.
//!   Absent when the rows hold only one of the two classes.
//!
//! # Merging and memory
//!
//! Counts of (target, prediction) pairs and the log-loss sum add up. The ROC
//! AUC is exact, not binned: each state keeps its distinct scores, sorted,
//! with the number of positives and negatives at each; states merge by a
//! sorted merge, and the area is computed from the merged list in integer
//! arithmetic, so it is the same for any partitioning. The cost is one
//! entry per distinct score: 24 bytes in the guest and about 40 bytes in
//! the JSON state that crosses the host, at most one per row. A million
//! rows with distinct scores take about 24 MB in the instance that merges
//! (within the default 256 MiB memory cap). The state also crosses the
//! host boundary as one value per merge, and wasmtime caps what one call
//! may copy: at 10M rows with distinct scores (about 400 MB of state) the
//! merge is stopped. Past a few million rows, set `roc_auc = false`
//! (accuracy, the per-class metrics and the log loss stay exact and small),
//! until a binned AUC with a stated error bound exists.
//!
//! # Where the work runs
//!
//! Copied into the guest: the target, the prediction and the probability
//! columns, one call each per batch. Counting by class (a group-by) and
//! sorting scores with their labels have no native kernel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Batch, Column, DataType, Estimator, Outcome, Result, Task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    target: String,
    #[serde(default = "default_prediction")]
    prediction: String,
    #[serde(default = "default_probabilities")]
    probabilities: String,
    /// Compute the exact ROC AUC (binary): keeps every distinct score.
    #[serde(default = "default_roc_auc")]
    roc_auc: bool,
}

fn default_roc_auc() -> bool {
    true
}

fn default_prediction() -> String {
    "prediction".into()
}

fn default_probabilities() -> String {
    "proba_".into()
}

/// A class label.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(untagged)]
enum Class {
    Int(i64),
    Str(String),
}

/// Whether a column holds string classes (else numbers); other types fail.
fn is_text(column: &Column, name: &str) -> Result<bool> {
    match column.data_type() {
        DataType::Utf8 => Ok(true),
        DataType::Boolean | DataType::Int32 | DataType::Int64 | DataType::Float32 | DataType::Float64 => Ok(false),
        other => wasmpipe_sdk::fail!("column {name:?} is {other:?}: classes are integers or strings"),
    }
}

/// The class of every row, copied into the guest; `None` for null and NaN.
fn read_classes(column: &Column, name: &str) -> Result<Vec<Option<Class>>> {
    if is_text(column, name)? {
        return Ok(column.read_utf8()?.into_iter().map(|v| v.map(Class::Str)).collect());
    }
    column
        .read_f64()?
        .into_iter()
        .map(|v| {
            if v.is_nan() {
                Ok(None)
            } else if v.fract() == 0.0 && v.abs() <= 9007199254740992.0 {
                Ok(Some(Class::Int(v as i64)))
            } else {
                wasmpipe_sdk::fail!("column {name:?} holds {v}: classes are integers or strings")
            }
        })
        .collect()
}

/// The partial sums over the rows that carry probabilities.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Probabilities {
    /// The classes of the probability columns, sorted.
    classes: Vec<Class>,
    /// The sum of `-ln p(target)` (clipped).
    log_loss: f64,
    /// With two classes: the distinct scores (`p(classes[1])`), ascending,
    /// with the numbers of positive and negative rows at each.
    scores: Vec<(f64, u64, u64)>,
}

/// One partition's partial counts.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
struct State {
    /// Rows counted.
    rows: u64,
    /// Rows not counted (a null target or prediction).
    skipped: u64,
    /// `(target, prediction, rows)`, sorted by the pair.
    pairs: Vec<(Class, Class, u64)>,
    probabilities: Option<Probabilities>,
}

/// The metrics document.
#[derive(Serialize, Deserialize, Debug)]
struct Metrics {
    rows: u64,
    skipped: u64,
    accuracy: f64,
    classes: Vec<Class>,
    confusion_matrix: Vec<Vec<u64>>,
    precision: Vec<f64>,
    recall: Vec<f64>,
    f1: Vec<f64>,
    support: Vec<u64>,
    #[serde(rename = "macro")]
    macro_avg: Averages,
    weighted: Averages,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roc_auc: Option<f64>,
}

#[derive(Serialize, Deserialize, Debug)]
struct Averages {
    precision: f64,
    recall: f64,
    f1: f64,
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Class::Int(v) => write!(f, "{v}"),
            Class::Str(s) => f.write_str(s),
        }
    }
}

/// The metrics as report rows `(metric, class, value)`: overall ones, the
/// per-class ones, and the confusion matrix as `confusion[PREDICTED]` per
/// true class.
fn metric_rows(m: &Metrics) -> Vec<(String, Option<String>, f64)> {
    let mut rows = vec![
        ("rows".to_string(), None, m.rows as f64),
        ("skipped".into(), None, m.skipped as f64),
        ("accuracy".into(), None, m.accuracy),
    ];
    for (avg, a) in [("macro", &m.macro_avg), ("weighted", &m.weighted)] {
        for (name, v) in [("precision", a.precision), ("recall", a.recall), ("f1", a.f1)] {
            rows.push((format!("{avg}_{name}"), None, v));
        }
    }
    rows.extend(m.log_loss.map(|v| ("log_loss".to_string(), None, v)));
    rows.extend(m.roc_auc.map(|v| ("roc_auc".to_string(), None, v)));
    for (i, class) in m.classes.iter().enumerate() {
        let c = Some(class.to_string());
        rows.push(("precision".into(), c.clone(), m.precision[i]));
        rows.push(("recall".into(), c.clone(), m.recall[i]));
        rows.push(("f1".into(), c.clone(), m.f1[i]));
        rows.push(("support".into(), c.clone(), m.support[i] as f64));
        for (j, predicted) in m.classes.iter().enumerate() {
            rows.push((format!("confusion[{predicted}]"), c.clone(), m.confusion_matrix[i][j] as f64));
        }
    }
    rows
}

/// Add sorted `(target, prediction, rows)` lists.
fn merge_pairs(a: Vec<(Class, Class, u64)>, b: Vec<(Class, Class, u64)>) -> Vec<(Class, Class, u64)> {
    let mut counts = BTreeMap::new();
    for (t, p, n) in a.into_iter().chain(b) {
        *counts.entry((t, p)).or_insert(0u64) += n;
    }
    counts.into_iter().map(|((t, p), n)| (t, p, n)).collect()
}

/// Merge two ascending `(score, positives, negatives)` lists, adding the
/// counts of equal scores.
fn merge_scores(a: Vec<(f64, u64, u64)>, b: Vec<(f64, u64, u64)>) -> Vec<(f64, u64, u64)> {
    let mut out: Vec<(f64, u64, u64)> = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => {
                if x.0.total_cmp(&y.0).is_le() {
                    a.next()
                } else {
                    b.next()
                }
            }
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        let (s, pos, neg) = next.expect("peeked");
        match out.last_mut() {
            Some(last) if last.0 == s => {
                last.1 += pos;
                last.2 += neg;
            }
            _ => out.push((s, pos, neg)),
        }
    }
    out
}

/// `(score, positive)` pairs as an ascending list of distinct scores.
fn score_list(mut pairs: Vec<(f64, bool)>) -> Vec<(f64, u64, u64)> {
    // -0 and +0 are the same score.
    pairs.iter_mut().for_each(|(s, _)| *s += 0.0);
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    merge_scores(pairs.into_iter().map(|(s, pos)| (s, pos as u64, !pos as u64)).collect(), Vec::new())
}

/// The exact ROC AUC of an ascending score list; `None` without both a
/// positive and a negative.
fn roc_auc(scores: &[(f64, u64, u64)]) -> Option<f64> {
    let (positives, negatives) = scores.iter().fold((0u128, 0u128), |(p, n), s| (p + s.1 as u128, n + s.2 as u128));
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Twice the area: each positive beats the negatives below it (2 each)
    // and ties with those at its score (1 each).
    let mut below = 0u128;
    let mut twice = 0u128;
    for &(_, pos, neg) in scores {
        twice += pos as u128 * (2 * below + neg as u128);
        below += neg as u128;
    }
    Some(twice as f64 / (2 * positives * negatives) as f64)
}

/// `num / den`, 0 when `den` is 0 (scikit-learn's default `zero_division`).
fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 { 0.0 } else { num / den }
}

/// The metrics of the merged counts.
fn metrics(state: &State) -> Metrics {
    let mut classes: Vec<Class> = state.pairs.iter().flat_map(|(t, p, _)| [t.clone(), p.clone()]).collect();
    classes.sort();
    classes.dedup();
    let at = |c: &Class| classes.binary_search(c).expect("a class of the pairs");
    let k = classes.len();
    let mut matrix = vec![vec![0u64; k]; k];
    for (t, p, n) in &state.pairs {
        matrix[at(t)][at(p)] += n;
    }
    let rows: u64 = matrix.iter().flatten().sum();
    let correct: u64 = (0..k).map(|i| matrix[i][i]).sum();
    let (mut precision, mut recall, mut f1, mut support) = (vec![], vec![], vec![], vec![]);
    for c in 0..k {
        let tp = matrix[c][c] as f64;
        let truth: u64 = matrix[c].iter().sum();
        let predicted: u64 = matrix.iter().map(|r| r[c]).sum();
        precision.push(ratio(tp, predicted as f64));
        recall.push(ratio(tp, truth as f64));
        f1.push(ratio(2.0 * tp, (truth + predicted) as f64));
        support.push(truth);
    }
    let total: u64 = support.iter().sum();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / k as f64;
    let weighted = |v: &[f64]| ratio(v.iter().zip(&support).map(|(x, &s)| x * s as f64).sum(), total as f64);
    let probabilities = state.probabilities.as_ref();
    Metrics {
        rows,
        skipped: state.skipped,
        accuracy: ratio(correct as f64, rows as f64),
        classes,
        confusion_matrix: matrix,
        macro_avg: Averages { precision: mean(&precision), recall: mean(&recall), f1: mean(&f1) },
        weighted: Averages { precision: weighted(&precision), recall: weighted(&recall), f1: weighted(&f1) },
        precision,
        recall,
        f1,
        support,
        log_loss: probabilities.map(|p| p.log_loss / rows as f64),
        roc_auc: probabilities.and_then(|p| roc_auc(&p.scores)),
    }
}

/// Fold one batch's rows into `state`.
fn count(state: &mut State, batch: &Batch, config: &Config) -> Result<()> {
    let (target, prediction) = (batch.column(&config.target)?, batch.column(&config.prediction)?);
    let text = is_text(&target, &config.target)?;
    if text != is_text(&prediction, &config.prediction)? {
        wasmpipe_sdk::fail!(
            "target {:?} is {:?} but prediction {:?} is {:?}: they must both be numbers or both strings",
            config.target,
            target.data_type(),
            config.prediction,
            prediction.data_type()
        );
    }
    let truth = read_classes(&target, &config.target)?;
    let predicted = read_classes(&prediction, &config.prediction)?;

    // The probability columns: `<prefix><class>`, sorted by class.
    let mut columns: Vec<(Class, String)> = Vec::new();
    for name in batch.column_names() {
        let Some(label) = name.strip_prefix(&config.probabilities) else { continue };
        let class = if text {
            Class::Str(label.to_string())
        } else {
            match label.parse::<i64>() {
                Ok(v) => Class::Int(v),
                Err(_) => wasmpipe_sdk::fail!("column {name:?} does not name a class of the numeric target"),
            }
        };
        columns.push((class, name));
    }
    columns.sort();
    let values = columns.iter().map(|(_, name)| batch.f64s(name)).collect::<Result<Vec<_>>>()?;
    let classes: Vec<Class> = columns.into_iter().map(|(c, _)| c).collect();

    let (mut rows, mut skipped) = (0, 0);
    let mut pairs = BTreeMap::new();
    let mut log_loss = 0.0;
    let mut scores = Vec::new();
    let tolerance = 1e-8 + f64::EPSILON.sqrt();
    for (i, (t, p)) in truth.into_iter().zip(predicted).enumerate() {
        let (Some(t), Some(p)) = (t, p) else {
            skipped += 1;
            continue;
        };
        if !classes.is_empty() {
            let row: Vec<f64> = values.iter().map(|v| v[i]).collect();
            let sum: f64 = row.iter().sum();
            if row.iter().any(|v| v.is_nan()) || (sum - 1.0).abs() > tolerance {
                wasmpipe_sdk::fail!("row {i} of a batch: the probabilities {row:?} do not sum to one");
            }
            let Ok(j) = classes.binary_search(&t) else {
                wasmpipe_sdk::fail!("target class {t:?} has no probability column {}<class>", config.probabilities);
            };
            log_loss -= row[j].clamp(f64::EPSILON, 1.0 - f64::EPSILON).ln();
            if classes.len() == 2 && config.roc_auc {
                scores.push((row[1], j == 1));
            }
        }
        rows += 1;
        *pairs.entry((t, p)).or_insert(0u64) += 1;
    }
    let part = State {
        rows,
        skipped,
        pairs: pairs.into_iter().map(|((t, p), n)| (t, p, n)).collect(),
        probabilities: (!classes.is_empty()).then(|| Probabilities { classes, log_loss, scores: score_list(scores) }),
    };
    let whole = std::mem::take(state);
    *state = ClassifyEval::merge(whole, part)?;
    Ok(())
}

struct ClassifyEval;

impl Estimator for ClassifyEval {
    type State = State;
    type Carry = ();
    type Model = Metrics;

    fn begin(_task: &Task, _carry: Option<()>) -> Result<State> {
        let _: Config = wasmpipe_sdk::config()?;
        Ok(State::default())
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let config: Config = wasmpipe_sdk::config()?;
        count(state, batch, &config)
    }

    fn merge(a: State, b: State) -> Result<State> {
        let probabilities = match (a.probabilities, b.probabilities) {
            (Some(x), Some(y)) => {
                if x.classes != y.classes {
                    wasmpipe_sdk::fail!(
                        "partitions have probability columns for different classes: {:?} and {:?}",
                        x.classes,
                        y.classes
                    );
                }
                Some(Probabilities {
                    classes: x.classes,
                    log_loss: x.log_loss + y.log_loss,
                    scores: merge_scores(x.scores, y.scores),
                })
            }
            (x, y) => x.or(y),
        };
        Ok(State {
            rows: a.rows + b.rows,
            skipped: a.skipped + b.skipped,
            pairs: merge_pairs(a.pairs, b.pairs),
            probabilities,
        })
    }

    fn finalize(state: State, _pass: u32) -> Result<Outcome<Metrics, ()>> {
        if state.rows == 0 {
            wasmpipe_sdk::fail!("no rows with both a target and a prediction to evaluate");
        }
        let m = metrics(&state);
        wasmpipe_sdk::info!("accuracy = {:.4}", m.accuracy);
        wasmpipe_sdk::info!(
            "macro precision = {:.4}, recall = {:.4}, f1 = {:.4} over {} rows and {} classes",
            m.macro_avg.precision,
            m.macro_avg.recall,
            m.macro_avg.f1,
            m.rows,
            m.classes.len()
        );
        if let Some(l) = m.log_loss {
            wasmpipe_sdk::info!("log_loss = {l:.6}");
        }
        if let Some(a) = m.roc_auc {
            wasmpipe_sdk::info!("roc_auc = {a:.6}");
        }
        wasmpipe_sdk::report(&m, Some(&wasmpipe_sdk::metrics_table(&metric_rows(&m))?))?;
        Ok(Outcome::Done(m))
    }
}

wasmpipe_sdk::export_aggregator!(ClassifyEval);

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> Class {
        Class::Int(v)
    }

    /// The state of `(target, prediction)` pairs.
    fn state(pairs: &[(i64, i64)]) -> State {
        let mut counts = BTreeMap::new();
        for &(t, p) in pairs {
            *counts.entry((int(t), int(p))).or_insert(0) += 1;
        }
        State {
            rows: pairs.len() as u64,
            skipped: 0,
            pairs: counts.into_iter().map(|((t, p), n)| (t, p, n)).collect(),
            probabilities: None,
        }
    }

    #[test]
    fn metrics_of_a_known_confusion_matrix() {
        // Target 0: 3 rows (2 right, 1 as 1); target 1: 2 rows (1 right, 1 as 2);
        // target 2: 1 row (right); class 3 is only ever predicted.
        let s = state(&[(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3)]);
        let m = metrics(&s);
        assert_eq!(m.classes, vec![int(0), int(1), int(2), int(3)]);
        assert_eq!(m.confusion_matrix, vec![vec![2, 1, 0, 0], vec![0, 1, 1, 0], vec![0, 0, 1, 1], vec![0, 0, 0, 0]]);
        assert_eq!(m.accuracy, 4.0 / 7.0);
        assert_eq!(m.precision, vec![1.0, 0.5, 0.5, 0.0]);
        assert_eq!(m.recall, vec![2.0 / 3.0, 0.5, 0.5, 0.0]);
        assert_eq!(m.f1, vec![0.8, 0.5, 0.5, 0.0]);
        assert_eq!(m.support, vec![3, 2, 2, 0]);
        assert!((m.macro_avg.f1 - 1.8 / 4.0).abs() < 1e-15);
        assert!((m.weighted.recall - 4.0 / 7.0).abs() < 1e-15, "weighted recall is accuracy");
        assert_eq!((m.log_loss, m.roc_auc), (None, None));
    }

    #[test]
    fn merged_partials_equal_the_whole() {
        let pairs: Vec<(i64, i64)> = (0..200).map(|i| (i % 3, (i * 7 + i / 5) % 3)).collect();
        let whole = state(&pairs);
        for size in [1, 7, 64] {
            let merged = pairs.chunks(size).map(state).try_fold(State::default(), ClassifyEval::merge).unwrap();
            assert_eq!(merged, whole);
        }
    }

    /// The AUC by its definition, over every (positive, negative) pair.
    fn brute_auc(rows: &[(f64, bool)]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for &(p, _) in rows.iter().filter(|r| r.1) {
            for &(n, _) in rows.iter().filter(|r| !r.1) {
                pairs += 1.0;
                wins += if p > n {
                    1.0
                } else if p == n {
                    0.5
                } else {
                    0.0
                };
            }
        }
        wins / pairs
    }

    #[test]
    fn exact_auc_with_ties_merges_across_partitions() {
        let rows: Vec<(f64, bool)> =
            (0..300).map(|i| (((i * 37) % 50) as f64 / 50.0, (i * 13 + i / 7) % 3 == 0)).collect();
        let want = brute_auc(&rows);
        for size in [1, 9, 300] {
            let merged = rows.chunks(size).map(|c| score_list(c.to_vec())).fold(Vec::new(), merge_scores);
            assert_eq!(merged.len(), 50, "one entry per distinct score");
            let got = roc_auc(&merged).unwrap();
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
        assert_eq!(roc_auc(&score_list(vec![(0.5, true), (0.1, true)])), None, "no negatives");
        assert_eq!(roc_auc(&score_list(vec![(0.0, true), (-0.0, false)])), Some(0.5), "-0 ties +0");
    }

    #[test]
    fn metrics_round_trip_through_json_without_absent_fields() {
        let m = metrics(&state(&[(0, 0), (1, 0)]));
        let text = String::from_utf8(wasmpipe_sdk::encode(&m).unwrap()).unwrap();
        assert!(text.contains("\"macro\":{") && !text.contains("log_loss"), "{text}");
        let back: Metrics = wasmpipe_sdk::decode(text.as_bytes(), "metrics").unwrap();
        assert_eq!(back.confusion_matrix, m.confusion_matrix);
    }
}

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
//! roc_auc = "exact"           # default (`true` too); "binned", or false for none
//! roc_bins = 65536            # default; with roc_auc = "binned": bins of the score in [0, 1]
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
//!   `classes[1]` (`roc_auc_score`): the probability that a random positive
//!   scores above a random negative, ties counting one half (the
//!   Mann–Whitney statistic). `"exact"` ranks every distinct score, as
//!   scikit-learn. `"binned"` ranks `roc_bins` equal bins of the score over
//!   `[0, 1]` (bin `floor(score * roc_bins)`; a score of 1 in the last bin,
//!   scores outside `[0, 1]` in the end bins), a positive and a negative in
//!   the same bin counting one half, as a tie.
//!   Absent when the rows hold only one of the two classes.
//! * `roc_auc_error_bound` (with `roc_auc`): how far the exact ROC AUC can
//!   be from the reported one. 0 for `"exact"`. For `"binned"`, only the
//!   pairs of a positive and a negative in the same bin have an unknown
//!   order, and each counts one half where the truth is 0, 1/2 or 1, so
//!   the bound is `sum over bins of positives * negatives / (2 P N)` (`P`,
//!   `N`: all positives and negatives). It is attained when every such
//!   pair is ordered the same way, so it is the exact worst case, not an
//!   estimate. For scores with densities `f+` and `f-` it is about
//!   `integral(f+ f-) / (2 roc_bins)`: near 1e-5 at the default 65536 bins
//!   when the classes overlap broadly, and 0 when no positive shares a bin
//!   with a negative (breast cancer's logistic-regression scores).
//!
//! # Merging and memory
//!
//! Counts of (target, prediction) pairs and the log-loss sum add up. For the
//! ROC AUC each state keeps a sorted list of keys (distinct scores, or
//! non-empty bins) with the number of positives and negatives at each;
//! states merge by a sorted merge that adds the counts of equal keys, and
//! the area and the bound are computed from the merged list in integer
//! arithmetic. Both are therefore the same, bit for bit, at any
//! partitioning and in any order of merges.
//!
//! `"binned"` keeps at most `roc_bins` entries whatever the rows: at the
//! default 65536, at most 1.5 MB in the guest and about 1 MB of JSON
//! state per merge. `roc_bins` is at most 2^20 (about 25 MB), the size of
//! the exact state at a million distinct scores.
//!
//! `"exact"` keeps one entry per distinct score, at most one per row: 24
//! bytes in the guest and about 40 bytes in the JSON state that crosses the
//! host. A million rows with distinct scores take about 24 MB in the
//! instance that merges (within the default 256 MiB memory cap). The state
//! crosses the host boundary as one value per merge, and wasmtime caps what
//! one call may copy: at 10M rows with distinct scores (about 400 MB of
//! state) the merge is stopped. Past a million rows or so, use `"binned"`
//! (or `false`; accuracy, the per-class metrics and the log loss stay exact
//! and small at any size).
//!
//! # Where the work runs
//!
//! Copied into the guest: the target, the prediction and the probability
//! columns, one call each per batch. Counting by class (a group-by),
//! sorting scores with their labels and counting them by bin have no
//! native kernel.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Batch, Column, DataType, Error, Estimator, Outcome, Result, Task};

/// The default number of bins for `roc_auc = "binned"`: its error bound is
/// about `overlap / 131072` (under the 4 decimals a report prints for
/// broadly overlapping classes) for at most 1.5 MB of state.
const DEFAULT_BINS: u32 = 1 << 16;

/// The most bins: about 25 MB of state, as the exact AUC of a million
/// distinct scores; past that, bins cost more than they save.
const MAX_BINS: u32 = 1 << 20;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    target: String,
    #[serde(default = "default_prediction")]
    prediction: String,
    #[serde(default = "default_probabilities")]
    probabilities: String,
    /// How to compute the ROC AUC (binary).
    #[serde(default)]
    roc_auc: RocAuc,
    /// Bins for `roc_auc = "binned"`; `None` for the default.
    #[serde(default)]
    roc_bins: Option<u32>,
}

/// The stage's config, checked.
fn config() -> Result<Config> {
    checked(wasmpipe_sdk::config()?)
}

/// `config` if its settings are consistent.
fn checked(config: Config) -> Result<Config> {
    match (config.roc_auc, config.roc_bins) {
        (RocAuc::Binned, Some(bins)) if !(1..=MAX_BINS).contains(&bins) => {
            Err(Error::InvalidConfig(format!("roc_bins: must be from 1 to {MAX_BINS}, got {bins}")))
        }
        (RocAuc::Off | RocAuc::Exact, Some(_)) => {
            Err(Error::InvalidConfig("roc_bins: only applies with roc_auc = \"binned\"".into()))
        }
        _ => Ok(config),
    }
}

/// The `roc_auc` setting: `true` or `"exact"`, `"binned"`, or `false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum RocAuc {
    Off,
    #[default]
    Exact,
    Binned,
}

impl<'de> Deserialize<'de> for RocAuc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Setting;
        impl serde::de::Visitor<'_> for Setting {
            type Value = RocAuc;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"true, false, "exact" or "binned""#)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<RocAuc, E> {
                Ok(if v { RocAuc::Exact } else { RocAuc::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<RocAuc, E> {
                match v {
                    "exact" => Ok(RocAuc::Exact),
                    "binned" => Ok(RocAuc::Binned),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Setting)
    }
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
    /// The ranked scores `p(classes[1])` for the ROC AUC.
    ranking: Ranking,
}

/// What a state keeps of the scores for the ROC AUC: ascending keys with
/// the numbers of positive and negative rows at each.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum Ranking {
    /// No ROC AUC: `roc_auc = false`, or not two probability columns.
    Off,
    /// Every distinct score.
    Exact(Vec<(f64, u64, u64)>),
    /// The non-empty ones of `bins` equal bins over [0, 1] (see [`bin`]).
    Binned { bins: u32, counts: Vec<(u32, u64, u64)> },
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roc_auc_error_bound: Option<f64>,
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
    rows.extend(m.roc_auc_error_bound.map(|v| ("roc_auc_error_bound".to_string(), None, v)));
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

/// Merge two lists of `(key, positives, negatives)`, ascending by `order`,
/// adding the counts of equal keys.
fn merge_counts<K: Copy>(
    a: Vec<(K, u64, u64)>,
    b: Vec<(K, u64, u64)>,
    order: impl Fn(&K, &K) -> Ordering,
) -> Vec<(K, u64, u64)> {
    let mut out: Vec<(K, u64, u64)> = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => {
                if order(&x.0, &y.0).is_le() {
                    a.next()
                } else {
                    b.next()
                }
            }
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        let (key, pos, neg) = next.expect("peeked");
        match out.last_mut() {
            Some(last) if order(&last.0, &key).is_eq() => {
                last.1 += pos;
                last.2 += neg;
            }
            _ => out.push((key, pos, neg)),
        }
    }
    out
}

/// `(key, positive)` pairs as an ascending list of distinct keys.
fn counts<K: Copy>(mut pairs: Vec<(K, bool)>, order: impl Fn(&K, &K) -> Ordering) -> Vec<(K, u64, u64)> {
    pairs.sort_by(|a, b| order(&a.0, &b.0));
    merge_counts(pairs.into_iter().map(|(k, pos)| (k, pos as u64, !pos as u64)).collect(), Vec::new(), order)
}

/// `(score, positive)` pairs as an ascending list of distinct scores.
fn score_list(mut pairs: Vec<(f64, bool)>) -> Vec<(f64, u64, u64)> {
    // -0 and +0 are the same score.
    pairs.iter_mut().for_each(|(s, _)| *s += 0.0);
    counts(pairs, f64::total_cmp)
}

/// The bin of `score` among `bins` equal bins over [0, 1]: `floor(score *
/// bins)`, 1 in the last bin, scores outside [0, 1] in the end bins. It
/// never decreases as the score grows, so rows in different bins are
/// ordered as their scores.
fn bin(score: f64, bins: u32) -> u32 {
    ((score * bins as f64).floor().max(0.0) as u32).min(bins - 1)
}

/// `(score, positive)` pairs as an ascending list of non-empty bins.
fn bin_list(pairs: Vec<(f64, bool)>, bins: u32) -> Vec<(u32, u64, u64)> {
    counts(pairs.into_iter().map(|(s, pos)| (bin(s, bins), pos)).collect(), u32::cmp)
}

/// The ROC AUC of an ascending list of keys (scores or bins) with their
/// positives and negatives, as the Mann–Whitney statistic: a positive
/// beats the negatives at lower keys and ties with those at its own. And
/// the share of (positive, negative) pairs at the same key, halved: how
/// far the AUC of the unbinned scores can be, when keys are bins. `None`
/// without both a positive and a negative.
fn roc_auc<K>(ranked: &[(K, u64, u64)]) -> Option<(f64, f64)> {
    let (positives, negatives) = ranked.iter().fold((0u128, 0u128), |(p, n), s| (p + s.1 as u128, n + s.2 as u128));
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Twice the area: 2 for each pair in order, 1 for each pair at one key.
    let (mut below, mut twice, mut tied) = (0u128, 0u128, 0u128);
    for &(_, pos, neg) in ranked {
        let (pos, neg) = (pos as u128, neg as u128);
        twice += pos * (2 * below + neg);
        tied += pos * neg;
        below += neg;
    }
    let pairs = (2 * positives * negatives) as f64;
    Some((twice as f64 / pairs, tied as f64 / pairs))
}

/// The ROC AUC of a ranking and its error bound.
fn ranking_auc(ranking: &Ranking) -> Option<(f64, f64)> {
    match ranking {
        Ranking::Off => None,
        // Equal scores are true ties, which the AUC counts one half.
        Ranking::Exact(scores) => roc_auc(scores).map(|(auc, _)| (auc, 0.0)),
        Ranking::Binned { counts, .. } => roc_auc(counts),
    }
}

/// The ROC and precision-recall curves a report plots: the points of the
/// ROC curve as the threshold falls from above every score to below every
/// one (each key a step, its tied rows a straight segment, so that the
/// trapezoids under the points add up to the ROC AUC), thinned to those at
/// least [`CURVE_STEP`] (in `fpr + tpr`) from the last point kept, the
/// ends always kept. Thinning moves the area under the points by at most
/// `CURVE_STEP / 4`: a chord from one kept point to the next lies within
/// half the box of its two steps of the true curve.
#[derive(Serialize, Debug, PartialEq)]
struct Curve {
    fpr: Vec<f64>,
    tpr: Vec<f64>,
    /// `tp / (tp + fp)` at each point; 1 at the first (nothing predicted
    /// positive), as scikit-learn's `precision_recall_curve`.
    precision: Vec<f64>,
    /// scikit-learn's `average_precision_score` over every key (not only
    /// the points kept): the sum of `precision * (recall step)`.
    #[serde(skip)]
    average_precision: f64,
}

/// How far apart (in `fpr + tpr`) the points a [`Curve`] keeps are: at most
/// about 1,000 points, the area under them within 5e-4 of the AUC.
const CURVE_STEP: f64 = 0.002;

/// The curve of an ascending list of keys with their positives and
/// negatives; `None` without both a positive and a negative.
fn curve<K>(ranked: &[(K, u64, u64)]) -> Option<Curve> {
    let (positives, negatives) = ranked.iter().fold((0u64, 0u64), |(p, n), s| (p + s.1, n + s.2));
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut c = Curve { fpr: vec![0.0], tpr: vec![0.0], precision: vec![1.0], average_precision: 0.0 };
    let (mut tp, mut fp) = (0u64, 0u64);
    let last = ranked.len() - 1;
    for (i, &(_, pos, neg)) in ranked.iter().rev().enumerate() {
        tp += pos;
        fp += neg;
        let (fpr, tpr) = (fp as f64 / negatives as f64, tp as f64 / positives as f64);
        let precision = tp as f64 / (tp + fp) as f64;
        c.average_precision += precision * pos as f64 / positives as f64;
        let (lf, lt) = (c.fpr[c.fpr.len() - 1], c.tpr[c.tpr.len() - 1]);
        if i == last || (fpr - lf) + (tpr - lt) >= CURVE_STEP {
            c.fpr.push(fpr);
            c.tpr.push(tpr);
            c.precision.push(precision);
        }
    }
    Some(c)
}

/// The curve of a ranking.
fn ranking_curve(ranking: &Ranking) -> Option<Curve> {
    match ranking {
        Ranking::Off => None,
        Ranking::Exact(scores) => curve(scores),
        Ranking::Binned { counts, .. } => curve(counts),
    }
}

/// What the stage publishes as its report: the metrics and, with a ROC
/// AUC, the average precision and the curves to plot.
#[derive(Serialize)]
struct Published<'a> {
    #[serde(flatten)]
    metrics: &'a Metrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    average_precision: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    curve: Option<Curve>,
}

/// Merge two partitions' rankings.
fn merge_rankings(a: Ranking, b: Ranking) -> Result<Ranking> {
    Ok(match (a, b) {
        (Ranking::Off, Ranking::Off) => Ranking::Off,
        (Ranking::Exact(x), Ranking::Exact(y)) => Ranking::Exact(merge_counts(x, y, f64::total_cmp)),
        (Ranking::Binned { bins, counts: x }, Ranking::Binned { bins: other, counts: y }) if bins == other => {
            Ranking::Binned { bins, counts: merge_counts(x, y, u32::cmp) }
        }
        (a, b) => {
            let kind = |r: &Ranking| match r {
                Ranking::Off => "none".to_string(),
                Ranking::Exact(_) => "exact".to_string(),
                Ranking::Binned { bins, .. } => format!("{bins} bins"),
            };
            wasmpipe_sdk::fail!("partitions rank scores differently for the ROC AUC: {} and {}", kind(&a), kind(&b))
        }
    })
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
    let auc = probabilities.and_then(|p| ranking_auc(&p.ranking));
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
        roc_auc: auc.map(|(a, _)| a),
        roc_auc_error_bound: auc.map(|(_, e)| e),
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
            if classes.len() == 2 && config.roc_auc != RocAuc::Off {
                scores.push((row[1], j == 1));
            }
        }
        rows += 1;
        *pairs.entry((t, p)).or_insert(0u64) += 1;
    }
    let ranking = match config.roc_auc {
        _ if classes.len() != 2 => Ranking::Off,
        RocAuc::Off => Ranking::Off,
        RocAuc::Exact => Ranking::Exact(score_list(scores)),
        RocAuc::Binned => {
            let bins = config.roc_bins.unwrap_or(DEFAULT_BINS);
            Ranking::Binned { bins, counts: bin_list(scores, bins) }
        }
    };
    let part = State {
        rows,
        skipped,
        pairs: pairs.into_iter().map(|((t, p), n)| (t, p, n)).collect(),
        probabilities: (!classes.is_empty()).then_some(Probabilities { classes, log_loss, ranking }),
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
        config()?;
        Ok(State::default())
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        count(state, batch, &config()?)
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
                    ranking: merge_rankings(x.ranking, y.ranking)?,
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
        if let (Some(a), Some(e), Some(p)) = (m.roc_auc, m.roc_auc_error_bound, &state.probabilities) {
            let how = match &p.ranking {
                Ranking::Binned { bins, .. } => format!("{bins} bins"),
                _ => "exact".into(),
            };
            wasmpipe_sdk::info!("roc_auc = {a:.6}, roc_auc_error_bound = {e:.3e} ({how})");
        }
        let curve = state.probabilities.as_ref().and_then(|p| ranking_curve(&p.ranking));
        let published =
            Published { metrics: &m, average_precision: curve.as_ref().map(|c| c.average_precision), curve };
        wasmpipe_sdk::report(&published, Some(&wasmpipe_sdk::metrics_table(&metric_rows(&m))?))?;
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
            let merged = rows
                .chunks(size)
                .map(|c| score_list(c.to_vec()))
                .fold(Vec::new(), |a, b| merge_counts(a, b, f64::total_cmp));
            assert_eq!(merged.len(), 50, "one entry per distinct score");
            let got = ranking_auc(&Ranking::Exact(merged)).unwrap();
            assert!((got.0 - want).abs() < 1e-15 && got.1 == 0.0, "{got:?} vs {want}");
        }
        assert_eq!(roc_auc(&score_list(vec![(0.5, true), (0.1, true)])), None, "no negatives");
        assert_eq!(roc_auc(&score_list(vec![(0.0, true), (-0.0, false)])).unwrap().0, 0.5, "-0 ties +0");
    }

    /// A deterministic PRNG (SplitMix64) for the randomized tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// `n` rows of overlapping classes: positives skewed up, negatives
    /// down, with some scores at and beyond the ends of [0, 1].
    fn random_rows(rng: &mut Rng, n: usize) -> Vec<(f64, bool)> {
        (0..n)
            .map(|_| {
                let positive = rng.next().is_multiple_of(3);
                let u = rng.unit();
                let score = match rng.next() % 50 {
                    0 => 0.0,
                    1 => 1.0,
                    2 => 1.0 - f64::EPSILON / 2.0,
                    3 => 1e-300,
                    4 => -1e-12,
                    5 => 1.0 + 1e-12,
                    _ if positive => u.sqrt(),
                    _ => u * u,
                };
                (score, positive)
            })
            .collect()
    }

    fn binned(rows: &[(f64, bool)], bins: u32) -> (f64, f64) {
        ranking_auc(&Ranking::Binned { bins, counts: bin_list(rows.to_vec(), bins) }).unwrap()
    }

    #[test]
    fn binned_auc_is_the_exact_auc_when_each_score_has_its_own_bin() {
        let mut rng = Rng(1);
        for bins in [7, 1000, 1 << 16] {
            // Scores at bin centres, some repeated (true ties, which both count one half).
            let rows: Vec<(f64, bool)> = (0..2000)
                .map(|_| (((rng.next() % bins as u64) as f64 + 0.5) / bins as f64, rng.next().is_multiple_of(4)))
                .collect();
            let exact = ranking_auc(&Ranking::Exact(score_list(rows.clone()))).unwrap();
            let (auc, bound) = binned(&rows, bins);
            assert_eq!(auc, exact.0, "{bins} bins");
            assert!((auc - brute_auc(&rows)).abs() < 1e-12);
            // Each bin holds one score, so only true ties are counted as unknown.
            let tied = score_list(rows.clone()).iter().map(|&(_, p, n)| (p * n) as f64).sum::<f64>();
            let (p, n) = rows.iter().fold((0.0, 0.0), |(p, n), r| if r.1 { (p + 1.0, n) } else { (p, n + 1.0) });
            assert!((bound - tied / (2.0 * p * n)).abs() < 1e-15, "{bins} bins: bound {bound}");
        }
        // Distinct scores, one per bin: no pair is in doubt.
        let rows: Vec<(f64, bool)> = (0..500).map(|i| ((i as f64 + 0.5) / 500.0, (i * 7) % 5 < 2)).collect();
        let exact = ranking_auc(&Ranking::Exact(score_list(rows.clone()))).unwrap();
        assert_eq!(binned(&rows, 500), exact);
    }

    #[test]
    fn binned_auc_is_within_its_bound_of_the_exact_auc() {
        let mut rng = Rng(42);
        for n in [2, 10, 1000, 20_000] {
            let rows = random_rows(&mut rng, n);
            let Some((exact, _)) = ranking_auc(&Ranking::Exact(score_list(rows.clone()))) else { continue };
            let mut last_bound = f64::INFINITY;
            for bins in [1, 2, 3, 7, 64, 1000, 1 << 16, MAX_BINS] {
                let (auc, bound) = binned(&rows, bins);
                assert!((auc - exact).abs() <= bound + 1e-12, "{n} rows, {bins} bins: {auc} vs {exact}, bound {bound}");
                assert!((0.0..=0.5).contains(&bound), "{bound}");
                if bins == 1 {
                    assert_eq!((auc, bound), (0.5, 0.5), "one bin: every pair in doubt");
                }
                // Powers of two refine one another, so the bound never grows.
                if bins.is_power_of_two() {
                    assert!(bound <= last_bound, "{bins} bins: {bound} > {last_bound}");
                    last_bound = bound;
                }
            }
        }
        // The bound is attained: every positive above the negatives of its bin.
        let rows = [(0.1, false), (0.2, true), (0.6, false), (0.7, true), (0.05, false)];
        let exact = ranking_auc(&Ranking::Exact(score_list(rows.to_vec()))).unwrap().0;
        let (auc, bound) = binned(&rows, 2);
        assert_eq!((exact, auc, bound), (10.0 / 12.0, 7.0 / 12.0, 3.0 / 12.0));
    }

    /// The merged ranking of `parts`, merged left to right, right to left,
    /// and as a balanced tree.
    fn merged_every_way(parts: &[Ranking]) -> [Ranking; 3] {
        fn tree(parts: &[Ranking]) -> Ranking {
            match parts {
                [] => unreachable!(),
                [one] => one.clone(),
                _ => {
                    let (a, b) = parts.split_at(parts.len() / 2);
                    merge_rankings(tree(a), tree(b)).unwrap()
                }
            }
        }
        let left = parts[1..].iter().cloned().fold(parts[0].clone(), |a, b| merge_rankings(a, b).unwrap());
        let right = parts[..parts.len() - 1]
            .iter()
            .rev()
            .cloned()
            .fold(parts[parts.len() - 1].clone(), |a, b| merge_rankings(b, a).unwrap());
        [left, right, tree(parts)]
    }

    #[test]
    fn binned_states_merge_the_same_in_any_grouping() {
        let mut rng = Rng(7);
        let rows = random_rows(&mut rng, 5000);
        let bins = 1000;
        let whole = Ranking::Binned { bins, counts: bin_list(rows.clone(), bins) };
        let want = ranking_auc(&whole).unwrap();
        for size in [1, 3, 77, 1000, 5000] {
            let parts: Vec<Ranking> =
                rows.chunks(size).map(|c| Ranking::Binned { bins, counts: bin_list(c.to_vec(), bins) }).collect();
            for merged in merged_every_way(&parts) {
                assert_eq!(merged, whole, "chunks of {size}");
                let got = ranking_auc(&merged).unwrap();
                assert_eq!((got.0.to_bits(), got.1.to_bits()), (want.0.to_bits(), want.1.to_bits()));
            }
        }
        // Memory: one entry per non-empty bin, whatever the rows.
        let Ranking::Binned { counts, .. } = &whole else { unreachable!() };
        assert!(counts.len() <= bins as usize && counts.windows(2).all(|w| w[0].0 < w[1].0));
        // Rankings of another kind, or other bins, do not merge.
        let other = Ranking::Binned { bins: 64, counts: vec![] };
        let err = merge_rankings(whole.clone(), other).unwrap_err();
        assert!(matches!(&err, Error::StageFailed(m) if m.ends_with("1000 bins and 64 bins")), "{err:?}");
        assert!(merge_rankings(Ranking::Exact(vec![]), whole).is_err());
    }

    #[test]
    fn binned_auc_edge_cases_mirror_the_exact_auc() {
        for rows in [vec![], vec![(0.3, true), (0.9, true)], vec![(0.3, false)]] {
            assert_eq!(binned_auc(&rows, 10), None, "one class or none: no AUC, as exact");
            assert_eq!(ranking_auc(&Ranking::Exact(score_list(rows.clone()))), None);
        }
        assert_eq!(ranking_auc(&Ranking::Off), None);
        // 1 goes to the last bin, scores beyond [0, 1] to the end bins, -0 with 0.
        assert_eq!([bin(1.0, 10), bin(1.5, 10), bin(f64::INFINITY, 10)], [9, 9, 9]);
        assert_eq!([bin(0.0, 10), bin(-0.0, 10), bin(-3.0, 10), bin(f64::NEG_INFINITY, 10)], [0, 0, 0, 0]);
        assert_eq!([bin(0.0999, 10), bin(0.1, 10), bin(0.5, 1), bin(1.0, MAX_BINS)], [0, 1, 0, MAX_BINS - 1]);
        // Bins never decrease as scores grow, for any number of bins.
        for bins in [1, 3, 10, 1000, 65535, 1 << 16, MAX_BINS] {
            let mut last = 0;
            for i in 0..=20_000 {
                let b = bin(i as f64 / 20_000.0, bins);
                assert!(b >= last && b < bins, "{bins} bins at {i}");
                last = b;
            }
            assert_eq!(last, bins - 1);
        }
        // All the rows in one bin: nothing is known of their order.
        assert_eq!(binned_auc(&[(0.51, true), (0.52, false)], 2), Some((0.5, 0.5)));
    }

    fn binned_auc(rows: &[(f64, bool)], bins: u32) -> Option<(f64, f64)> {
        ranking_auc(&Ranking::Binned { bins, counts: bin_list(rows.to_vec(), bins) })
    }

    /// A config as `config()` reads it; an error's message.
    fn parse(json: &str) -> std::result::Result<Config, String> {
        let message = |e| match e {
            Error::InvalidArgument(m) | Error::InvalidConfig(m) => m,
            other => panic!("{other:?}"),
        };
        checked(wasmpipe_sdk::decode(json.as_bytes(), "config").map_err(message)?).map_err(message)
    }

    #[test]
    fn roc_auc_settings() {
        let mode = |v: &str| parse(&format!(r#"{{"target": "t", "roc_auc": {v}}}"#)).map(|c| c.roc_auc);
        assert_eq!(parse(r#"{"target": "t"}"#).unwrap().roc_auc, RocAuc::Exact, "the default");
        assert_eq!(mode("true").unwrap(), RocAuc::Exact);
        assert_eq!(mode("false").unwrap(), RocAuc::Off);
        assert_eq!(mode(r#""exact""#).unwrap(), RocAuc::Exact);
        assert_eq!(mode(r#""binned""#).unwrap(), RocAuc::Binned);
        for bad in [r#""bined""#, "1"] {
            let err = mode(bad).unwrap_err();
            assert!(err.contains(r#"expected true, false, "exact" or "binned""#), "{err}");
        }
        let bins = |v: &str, mode: &str| parse(&format!(r#"{{"target": "t", "roc_auc": {mode}, "roc_bins": {v}}}"#));
        assert_eq!(bins("64", r#""binned""#).unwrap().roc_bins, Some(64));
        assert_eq!(bins(&MAX_BINS.to_string(), r#""binned""#).unwrap().roc_bins, Some(MAX_BINS));
        for bad in ["0".to_string(), (MAX_BINS + 1).to_string()] {
            let err = bins(&bad, r#""binned""#).unwrap_err();
            assert!(err.contains("roc_bins: must be from 1 to 1048576"), "{err}");
        }
        let err = bins("64", "true").unwrap_err();
        assert!(err.contains(r#"only applies with roc_auc = "binned""#), "{err}");
    }

    #[test]
    fn binned_metrics_report_the_bound() {
        let mut s = state(&[(0, 0), (1, 1), (0, 1)]);
        let rows = [(0.2, false), (0.9, true), (0.55, false)];
        let ranking = Ranking::Binned { bins: 2, counts: bin_list(rows.to_vec(), 2) };
        s.probabilities = Some(Probabilities { classes: vec![int(0), int(1)], log_loss: 1.0, ranking });
        let m = metrics(&s);
        assert_eq!((m.roc_auc, m.roc_auc_error_bound), (Some(0.75), Some(0.25)));
        let rows = metric_rows(&m);
        assert!(rows.contains(&("roc_auc_error_bound".to_string(), None, 0.25)), "{rows:?}");
        let text = String::from_utf8(wasmpipe_sdk::encode(&m).unwrap()).unwrap();
        assert!(text.contains(r#""roc_auc":0.75,"roc_auc_error_bound":0.25"#), "{text}");
        // The exact AUC states a bound of 0.
        let exact = Ranking::Exact(score_list(vec![(0.2, false), (0.9, true)]));
        s.probabilities.as_mut().unwrap().ranking = exact;
        assert_eq!((metrics(&s).roc_auc, metrics(&s).roc_auc_error_bound), (Some(1.0), Some(0.0)));
    }

    /// The trapezoids under a curve's ROC points.
    fn area(c: &Curve) -> f64 {
        c.fpr.windows(2).zip(c.tpr.windows(2)).map(|(f, t)| (f[1] - f[0]) * (t[0] + t[1]) / 2.0).sum()
    }

    #[test]
    fn the_curve_has_the_auc_under_it_and_sklearns_average_precision() {
        // sklearn: roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.75,
        // average_precision_score(...) = 0.8333...
        let rows = [(0.1, false), (0.4, false), (0.35, true), (0.8, true)];
        let c = curve(&score_list(rows.to_vec())).unwrap();
        assert_eq!(c.fpr, [0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(c.tpr, [0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(c.precision, [1.0, 1.0, 0.5, 2.0 / 3.0, 0.5]);
        assert!((area(&c) - 0.75).abs() < 1e-15);
        assert!((c.average_precision - 5.0 / 6.0).abs() < 1e-15, "{}", c.average_precision);
        // Ties are one straight segment, counted one half as the AUC does.
        let tied = curve(&score_list(vec![(0.5, true), (0.5, false)])).unwrap();
        assert_eq!((tied.fpr, tied.tpr), (vec![0.0, 1.0], vec![0.0, 1.0]));
        assert!(curve(&score_list(vec![(0.5, true)])).is_none());
    }

    #[test]
    fn a_thinned_curve_keeps_its_area_within_the_bound() {
        let mut rng = Rng(11);
        for n in [50, 2_000, 100_000] {
            let rows = random_rows(&mut rng, n);
            let ranked = score_list(rows.clone());
            let (auc, _) = roc_auc(&ranked).unwrap();
            let c = curve(&ranked).unwrap();
            assert!(c.fpr.len() <= (2.0 / CURVE_STEP) as usize + 2, "{} points", c.fpr.len());
            assert_eq!((c.fpr[0], c.tpr[0], c.fpr[c.fpr.len() - 1], c.tpr[c.tpr.len() - 1]), (0.0, 0.0, 1.0, 1.0));
            assert!((area(&c) - auc).abs() <= CURVE_STEP / 4.0, "n {n}: {} vs {auc}", area(&c));
            let bins = bin_list(rows, 1024);
            let (binned_auc, _) = roc_auc(&bins).unwrap();
            let binned = curve(&bins).unwrap();
            assert!((area(&binned) - binned_auc).abs() <= CURVE_STEP / 4.0, "n {n}: {} vs {binned_auc}", area(&binned));
            assert!(binned.fpr.windows(2).all(|f| f[1] >= f[0]) && binned.tpr.windows(2).all(|t| t[1] >= t[0]));
        }
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

//! Logistic regression (estimator), binary and multinomial, with the L2
//! penalty of scikit-learn's `LogisticRegression(C=c)` (`penalty="l2"`,
//! `fit_intercept=True`): the fitted model minimizes exactly the same
//! objective, so it converges to the same coefficients. Transform appends
//! the predicted class and one probability column per class.
//!
//! ```toml
//! [stage.fit.config]
//! features = ["mean_radius", "mean_texture"]
//! target = "target"          # integer (or integral float, or boolean) or string classes
//! c = 1.0                    # default; inverse regularization strength, > 0
//! max_iter = 100             # default; most fit passes in all, the first included
//! tol = 1e-8                 # default; convergence threshold (see below)
//! prediction = "prediction"  # default; the predicted class column
//! ```
//!
//! Transform adds `prediction` (the class, typed like the classes: int64
//! or utf8) and `proba_<class>` (float64) for every class, e.g. `proba_0`
//! and `proba_1`, or `proba_setosa`. A row with a null feature gets null in
//! all of them; a NaN feature gives NaN probabilities and a null class.
//!
//! # Math
//!
//! The classes are the target's distinct values, sorted (numbers
//! numerically, strings by code point), as scikit-learn's `classes_`. With
//! `x~ = [1, x]` (intercept first) and K classes:
//!
//! * K = 2 (binary): one weight row `w` for `classes[1]`, `p = sigmoid(w . x~)`;
//!   the objective is `C * sum_i [ln(1 + e^m_i) - y_i m_i] + 1/2 |w_1..d|^2`
//!   with `m_i = w . x~_i` and `y_i` = 1 for `classes[1]`.
//! * K > 2 (multinomial): one row `w_c` per class, softmax probabilities
//!   `p_ic = e^m_ic / sum_c' e^m_ic'`; the objective is
//!   `C * sum_i [logsumexp_c(m_ic) - m_i,y_i] + 1/2 sum_c |w_c,1..d|^2`.
//!
//! The intercepts are not penalized. Fitting is Newton's method (IRLS).
//! Pass 0 learns the classes. Every later pass evaluates the weights the
//! previous pass chose: each partition sums the log-loss, its gradient
//! `X~^T (p - y)` per class and its Hessian, blocks
//! `X~^T diag(p_c (delta_cc' - p_c')) X~` (the full softmax Hessian); the
//! sums merge by addition (in partition order, so the fit does not depend
//! on partitioning beyond rounding). Finalize scales by C, adds the penalty
//! (`w` to the gradient, 1 to the Hessian's diagonal, intercepts excepted)
//! and solves `H s = -g` by Cholesky on the `(m (d+1))`-square system
//! (m = 1 for binary, K for multinomial).
//!
//! For K > 2 the objective does not change when one constant is added to
//! every intercept, so `H` is singular along `v` = 1 on the intercepts.
//! The gradient is orthogonal to `v`, so the step solves `(H + l v v^T) s =
//! -g` instead, which has the same solution in the complement of `v`; the
//! intercepts are then centred to sum to zero, the solution scikit-learn's
//! solvers reach from zero weights. (The coefficients of the classes sum to
//! zero at the optimum by themselves.)
//!
//! A step is accepted when the objective decreases enough (Armijo, 1e-4 of
//! the predicted decrease); otherwise the next pass tries half the step from
//! the last accepted weights. The fit has converged when the Newton step's
//! largest component is at most `tol`, or a full step changed the objective
//! by at most `tol` relative to it; the final step is then applied (Newton
//! converges quadratically, so what remains is of the order of its square)
//! and the model is done. After `max_iter` passes without converging the
//! stage keeps the last accepted weights and logs a warning. A `max_iter`
//! above the stage's `max_passes` limit (default 100) is refused before any
//! data moves.
//!
//! # Where the work runs
//!
//! On native host kernels. Each Newton pass over a numeric target is one
//! fused kernel per batch (`logistic-newton`: the row filter, margins,
//! probabilities, loss, gradient and Hessian in one pass over the rows,
//! block by block in cache). A string target goes through the elementwise
//! kernels: the row filter (`compare`, `is-null`, `and`, `filter`), the
//! margins (`matvec`), the sigmoid, softmax and log-loss (`exp`, `ln`,
//! `pow`, `clamp`, `abs`, `if-then-else`, elementwise arithmetic), the loss
//! and gradient sums (`summarize`, `dot`), the Hessian blocks (`gram` of
//! the columns scaled by the square roots of the row weights). In
//! transform, the argmax (`compare-columns`,
//! `if-then-else`) and the class lookup (`cast`, `take`). Copied into the
//! guest: the target in pass 0 (no kernel lists distinct values), and in
//! every pass a string target (no kernel compares strings: the stage reads
//! the labels and hands back one boolean mask per class it needs).
//!
//! Rows with a null or non-finite feature, or a null or NaN target, are
//! skipped when fitting.
//!
//! # Model
//!
//! JSON: `features`, `prediction`, `classes` (numbers or strings),
//! `multinomial`, `intercepts` (1 for binary, K for multinomial) and
//! `coefficients` (one row of `features.len()` per intercept: scikit-learn's
//! `intercept_` and `coef_`), `objective` (scikit-learn's objective above,
//! at the last weights the fit evaluated), `rows`, `passes` and `converged`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{
    Apply, Batch, Column, Compare, DataType, Error, Estimator, Field, Outcome, Result, Schema, Task, Unary,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    features: Vec<String>,
    target: String,
    #[serde(default = "default_c")]
    c: f64,
    #[serde(default = "default_max_iter")]
    max_iter: u32,
    #[serde(default = "default_tol")]
    tol: f64,
    #[serde(default = "default_prediction")]
    prediction: String,
}

fn default_c() -> f64 {
    1.0
}

fn default_max_iter() -> u32 {
    100
}

fn default_tol() -> f64 {
    1e-8
}

fn default_prediction() -> String {
    "prediction".into()
}

/// The stage's config, checked.
fn config() -> Result<Config> {
    let config: Config = wasmpipe_sdk::config()?;
    let invalid = |m: String| Err(Error::InvalidConfig(m));
    if config.features.is_empty() {
        return invalid("features: name at least one column".into());
    }
    if config.features.contains(&config.target) {
        return invalid(format!(
            "features: lists the target {:?}, which would predict itself (with a column selector: exclude = [{:?}])",
            config.target, config.target
        ));
    }
    if config.features.contains(&config.prediction) || config.prediction == config.target {
        return Err(Error::InvalidConfig(format!(
            "prediction: {:?} is a feature or the target, which the prediction would overwrite; name a new column",
            config.prediction
        )));
    }
    if config.c <= 0.0 || !config.c.is_finite() {
        return invalid(format!("c: must be a positive number, got {}", config.c));
    }
    if config.max_iter < 2 {
        return invalid(format!("max_iter: must be at least 2 (pass 0 learns the classes), got {}", config.max_iter));
    }
    if config.tol.is_nan() || config.tol < 0.0 {
        return invalid(format!("tol: must be at least 0, got {}", config.tol));
    }
    Ok(config)
}

/// A class label: one of the target's distinct values.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(untagged)]
enum Class {
    Int(i64),
    Str(String),
}

impl Class {
    /// The label as it appears in a column name: `proba_<label>`.
    fn label(&self) -> String {
        match self {
            Class::Int(v) => v.to_string(),
            Class::Str(s) => s.clone(),
        }
    }
}

/// The class of a numeric target value: it must be an integer (|v| <= 2^53).
fn int_class(v: f64, target: &str) -> Result<Class> {
    if v.fract() == 0.0 && v.abs() <= 9007199254740992.0 {
        Ok(Class::Int(v as i64))
    } else {
        wasmpipe_sdk::fail!("target {target:?} holds {v}: classes are integers or strings")
    }
}

/// The classes of every row of `y` (which has no nulls), copied into the guest.
fn read_classes(y: &Column, target: &str) -> Result<Vec<Class>> {
    match y.data_type() {
        DataType::Utf8 => Ok(y.read_utf8()?.into_iter().flatten().map(Class::Str).collect()),
        DataType::Boolean | DataType::Int32 | DataType::Int64 | DataType::Float32 | DataType::Float64 => {
            y.read_f64()?.into_iter().map(|v| int_class(v, target)).collect()
        }
        other => wasmpipe_sdk::fail!("target {target:?} is {other:?}: logreg needs integer or string classes"),
    }
}

/// True where `x` is a finite number (false for null, NaN and infinities).
fn finite(x: &Column) -> Result<Column> {
    x.compare(Compare::Gt, f64::NEG_INFINITY)?.and(&x.compare(Compare::Lt, f64::INFINITY)?)
}

/// The rows of `batch` usable for fitting: finite features, a target.
fn usable(batch: &Batch, features: &[String], target: &str) -> Result<Batch> {
    let y = batch.column(target)?;
    let mut keep = y.is_null().not()?;
    if matches!(y.data_type(), DataType::Float32 | DataType::Float64) {
        keep = keep.and(&y.is_nan()?.not()?)?;
    }
    for name in features {
        keep = keep.and(&finite(&batch.column(name)?)?)?;
    }
    batch.filter(&keep)
}

/// The classes as numbers, when they all are.
fn numeric(classes: &[Class]) -> Option<Vec<f64>> {
    classes
        .iter()
        .map(|c| match c {
            Class::Int(v) => Some(*v as f64),
            Class::Str(_) => None,
        })
        .collect()
}

/// The named columns of `batch`, as handles.
fn columns(batch: &Batch, names: &[String]) -> Result<Vec<Column>> {
    names.iter().map(|n| batch.column(n)).collect()
}

/// Boolean masks of `y == classes[c]` for `c` in `which` (kernels for
/// numbers; for strings the labels are copied in and the masks handed back).
fn indicators(y: &Column, classes: &[Class], which: std::ops::Range<usize>) -> Result<Vec<Column>> {
    if matches!(y.data_type(), DataType::Utf8) {
        let labels = y.read_utf8()?;
        which
            .map(|c| {
                let want = classes[c].label();
                let mask: Vec<bool> = labels.iter().map(|l| l.as_deref() == Some(want.as_str())).collect();
                Column::from_bool(&mask, None)
            })
            .collect()
    } else {
        which
            .map(|c| match &classes[c] {
                Class::Int(v) => y.compare(Compare::Eq, *v as f64),
                Class::Str(s) => wasmpipe_sdk::fail!("class {s:?} is a string but the target is numeric"),
            })
            .collect()
    }
}

/// `w[0] + sum_j w[j + 1] x_j`, row by row.
fn margin(x: &[Column], w: &[f64]) -> Result<Column> {
    wasmpipe_sdk::matvec(&x.iter().collect::<Vec<_>>(), &w[1..], w[0])
}

/// `1 / (1 + e^-m)`, row by row.
fn sigmoid(m: &Column) -> Result<Column> {
    m.map(Unary::Neg)?.map(Unary::Exp)?.add_scalar(1.0)?.pow(-1.0)
}

/// `ln(1 + e^m) = max(m, 0) + ln(1 + e^-|m|)`, row by row, without overflow.
fn softplus(m: &Column) -> Result<Column> {
    let tail = m.map(Unary::Abs)?.map(Unary::Neg)?.map(Unary::Exp)?.add_scalar(1.0)?.map(Unary::Ln)?;
    m.clamp(0.0, f64::INFINITY)?.add(&tail)
}

/// The first largest of the margins, row by row: `(max, index)`. The index
/// is a float64 column, NaN (or null) where the margins are.
fn argmax(m: &[Column]) -> Result<(Column, Column)> {
    let zero = m[0].mul_scalar(0.0)?;
    let mut top = m[0].add(&zero)?;
    let mut index = zero.add_scalar(0.0)?;
    for (c, mc) in m.iter().enumerate().skip(1) {
        let above = mc.compare_column(Compare::Gt, &top)?;
        top = above.choose(mc, &top)?;
        index = above.choose(&zero.add_scalar(c as f64)?, &index)?;
    }
    Ok((top, index))
}

/// Softmax of the margins, row by row, shifted by the row's largest margin:
/// `(p_c, 1 - p_c, logsumexp)`, where `1 - p_c` sums the other classes so
/// that it keeps its precision when `p_c` is near 1.
fn softmax(m: &[Column]) -> Result<(Vec<Column>, Vec<Column>, Column)> {
    let (top, _) = argmax(m)?;
    let e = m.iter().map(|mc| mc.sub(&top)?.map(Unary::Exp)).collect::<Result<Vec<_>>>()?;
    let sum_except = |skip: Option<usize>| -> Result<Column> {
        let mut terms = e.iter().enumerate().filter(|(c, _)| Some(*c) != skip).map(|(_, ec)| ec);
        let first = terms.next().expect("two or more classes");
        terms.try_fold(first.mul_scalar(1.0)?, |acc, ec| acc.add(ec))
    };
    let total = sum_except(None)?;
    let p = e.iter().map(|ec| ec.div(&total)).collect::<Result<Vec<_>>>()?;
    let rest = (0..m.len()).map(|c| sum_except(Some(c))?.div(&total)).collect::<Result<Vec<_>>>()?;
    let lse = top.add(&total.map(Unary::Ln)?)?;
    Ok((p, rest, lse))
}

/// `X~^T diag(weights) X~` with `X~ = [1, x]`, by `gram` on the columns
/// scaled by `sqrt(weights)` (weights are >= 0).
fn weighted_gram(x: &[Column], weights: &Column) -> Result<Vec<f64>> {
    let root = weights.map(Unary::Sqrt)?;
    let mut scaled = vec![root.mul_scalar(1.0)?];
    for xj in x {
        scaled.push(xj.mul(&root)?);
    }
    Ok(wasmpipe_sdk::gram(&scaled.iter().collect::<Vec<_>>(), &root, false)?.xtx)
}

/// Add `X~^T r` to `g`.
fn add_gradient(g: &mut [f64], x: &[Column], r: &Column) -> Result<()> {
    g[0] += r.summarize()?.sum;
    for (gj, xj) in g[1..].iter_mut().zip(x) {
        *gj += xj.dot(r)?;
    }
    Ok(())
}

/// Add `sign * block` (p x p) to the `(a, b)` block of the `(m p)`-square `h`.
fn add_block(h: &mut [f64], block: &[f64], (a, b): (usize, usize), p: usize, m: usize, sign: f64) {
    let n = m * p;
    for i in 0..p {
        for j in 0..p {
            h[(a * p + i) * n + b * p + j] += sign * block[i * p + j];
        }
    }
}

/// Weight rows the model fits: one for binary, one per class otherwise.
fn modeled(classes: usize) -> usize {
    if classes == 2 { 1 } else { classes }
}

/// What every pass after the first evaluates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Carry {
    classes: Vec<Class>,
    /// The weights this pass evaluates: `m` rows of `[intercept, coefficients]`.
    weights: Vec<f64>,
    /// The last accepted weights and the step from them, while searching.
    base: Option<Base>,
}

/// The last accepted point of the Newton iteration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Base {
    weights: Vec<f64>,
    objective: f64,
    /// The Newton step from `weights`.
    step: Vec<f64>,
    /// `gradient . step` at `weights` (negative).
    slope: f64,
    /// The fraction of `step` being tried.
    fraction: f64,
}

/// One partition's partial state.
#[derive(Serialize, Deserialize)]
enum State {
    /// Pass 0: the distinct classes seen and the usable rows.
    Classes { classes: BTreeSet<Class>, rows: u64 },
    /// Later passes: log-loss sum, its gradient and Hessian at
    /// `carry.weights`, summed over the usable rows. The Hessian is
    /// `(m p)`-square and symmetric: its upper triangle, row by row.
    Newton { carry: Carry, rows: u64, loss: f64, gradient: Vec<f64>, hessian: Vec<f64> },
}

#[derive(Serialize, Deserialize)]
struct Model {
    features: Vec<String>,
    prediction: String,
    classes: Vec<Class>,
    multinomial: bool,
    intercepts: Vec<f64>,
    coefficients: Vec<Vec<f64>>,
    objective: f64,
    rows: u64,
    passes: u32,
    converged: bool,
}

struct LogReg;

impl Estimator for LogReg {
    type State = State;
    type Carry = Carry;
    type Model = Model;

    fn fit_passes(_task: &Task) -> Result<Option<u32>> {
        Ok(Some(config()?.max_iter))
    }

    fn begin(_task: &Task, carry: Option<Carry>) -> Result<State> {
        let config = config()?;
        Ok(match carry {
            None => State::Classes { classes: BTreeSet::new(), rows: 0 },
            Some(carry) => {
                let n = carry.weights.len();
                if n != modeled(carry.classes.len()) * (config.features.len() + 1) {
                    wasmpipe_sdk::fail!("carried {n} weights do not fit {} features", config.features.len());
                }
                State::Newton { carry, rows: 0, loss: 0.0, gradient: vec![0.0; n], hessian: vec![0.0; n * (n + 1) / 2] }
            }
        })
    }

    fn update(state: &mut State, batch: &Batch) -> Result<()> {
        let config = config()?;
        if let State::Newton { carry, rows, loss, gradient, hessian } = state
            && let Some(classes) = numeric(&carry.classes)
        {
            // A numeric target: the whole step in one fused kernel, which
            // skips the unusable rows itself.
            let x = columns(batch, &config.features)?;
            let y = batch.column(&config.target)?;
            if !matches!(y.data_type(), DataType::Utf8) {
                let terms = wasmpipe_sdk::logistic_newton(&x.iter().collect::<Vec<_>>(), &y, &classes, &carry.weights)?;
                *rows += terms.rows;
                *loss += terms.loss;
                gradient.iter_mut().zip(&terms.gradient).for_each(|(g, t)| *g += t);
                hessian.iter_mut().zip(&terms.hessian).for_each(|(h, t)| *h += t);
                return Ok(());
            }
        }
        let batch = usable(batch, &config.features, &config.target)?;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let y = batch.column(&config.target)?;
        match state {
            State::Classes { classes, rows: seen } => {
                *seen += rows;
                classes.extend(read_classes(&y, &config.target)?);
            }
            State::Newton { carry, rows: seen, loss, gradient, hessian: packed } => {
                *seen += rows;
                let x = columns(&batch, &config.features)?;
                let p = x.len() + 1;
                let k = carry.classes.len();
                let m = modeled(k);
                let mut full = vec![0.0; (m * p) * (m * p)];
                let hessian = &mut full;
                if m == 1 {
                    let y = indicators(&y, &carry.classes, 1..2)?.pop().expect("one mask");
                    let margins = margin(&x, &carry.weights)?;
                    let prob = sigmoid(&margins)?;
                    *loss += softplus(&margins)?.summarize()?.sum - y.dot(&margins)?;
                    add_gradient(gradient, &x, &prob.sub(&y)?)?;
                    let weights = prob.mul(&sigmoid(&margins.map(Unary::Neg)?)?)?;
                    add_block(hessian, &weighted_gram(&x, &weights)?, (0, 0), p, 1, 1.0);
                } else {
                    let y = indicators(&y, &carry.classes, 0..k)?;
                    let margins = carry.weights.chunks(p).map(|w| margin(&x, w)).collect::<Result<Vec<_>>>()?;
                    let (prob, rest, lse) = softmax(&margins)?;
                    *loss += lse.summarize()?.sum;
                    for c in 0..k {
                        *loss -= y[c].dot(&margins[c])?;
                        add_gradient(&mut gradient[c * p..(c + 1) * p], &x, &prob[c].sub(&y[c])?)?;
                        let diagonal = weighted_gram(&x, &prob[c].mul(&rest[c])?)?;
                        add_block(hessian, &diagonal, (c, c), p, m, 1.0);
                        for c2 in c + 1..k {
                            let off = weighted_gram(&x, &prob[c].mul(&prob[c2])?)?;
                            add_block(hessian, &off, (c, c2), p, m, -1.0);
                            add_block(hessian, &off, (c2, c), p, m, -1.0);
                        }
                    }
                }
                packed.iter_mut().zip(upper(&full, m * p)).for_each(|(h, v)| *h += v);
            }
        }
        Ok(())
    }

    fn merge(left: State, right: State) -> Result<State> {
        Ok(match (left, right) {
            (State::Classes { mut classes, rows }, State::Classes { classes: more, rows: r }) => {
                classes.extend(more);
                State::Classes { classes, rows: rows + r }
            }
            (
                State::Newton { carry, rows, mut loss, mut gradient, mut hessian },
                State::Newton { rows: r, loss: l, gradient: g, hessian: h, .. },
            ) => {
                loss += l;
                gradient.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                hessian.iter_mut().zip(h).for_each(|(a, b)| *a += b);
                State::Newton { carry, rows: rows + r, loss, gradient, hessian }
            }
            _ => wasmpipe_sdk::fail!("cannot merge states of different passes"),
        })
    }

    fn finalize(state: State, pass: u32) -> Result<Outcome<Model, Carry>> {
        let config = config()?;
        let p = config.features.len() + 1;
        match state {
            State::Classes { classes, rows } => {
                if classes.len() < 2 {
                    wasmpipe_sdk::fail!(
                        "target {:?} has {} class(es) in {rows} usable rows; logistic regression needs two or more",
                        config.target,
                        classes.len()
                    );
                }
                let labels: Vec<String> = classes.iter().map(Class::label).collect();
                wasmpipe_sdk::info!("{} classes in {rows} rows: {}", classes.len(), labels.join(", "));
                let weights = vec![0.0; modeled(classes.len()) * p];
                Ok(Outcome::NextPass(Carry { classes: classes.into_iter().collect(), weights, base: None }))
            }
            State::Newton { carry, rows, loss, gradient, hessian } => {
                if rows == 0 {
                    wasmpipe_sdk::fail!("no usable rows to fit");
                }
                let m = modeled(carry.classes.len());
                let hessian = unpack(&hessian, m * p);
                let (objective, gradient, hessian) = penalize(&carry.weights, loss, gradient, hessian, config.c, m, p);
                wasmpipe_sdk::debug!("pass {pass}: objective {objective}");
                let last = pass + 1 >= config.max_iter;
                let model = |weights: Vec<f64>, converged: bool| Model {
                    features: config.features.clone(),
                    prediction: config.prediction.clone(),
                    classes: carry.classes.clone(),
                    multinomial: m > 1,
                    intercepts: weights.chunks(p).map(|w| w[0]).collect(),
                    coefficients: weights.chunks(p).map(|w| w[1..].to_vec()).collect(),
                    objective,
                    rows,
                    passes: pass + 1,
                    converged,
                };
                match decide(carry.clone(), objective, &gradient, &hessian, config.tol, last)? {
                    Decision::Next(next) => Ok(Outcome::NextPass(next)),
                    Decision::Converged(weights) => {
                        wasmpipe_sdk::info!(
                            "converged in {} passes on {rows} rows, objective {objective:.6}",
                            pass + 1
                        );
                        Ok(Outcome::Done(model(weights, true)))
                    }
                    Decision::Stopped(weights, why) => {
                        wasmpipe_sdk::warn!("stopped after {} passes without converging: {why}", pass + 1);
                        Ok(Outcome::Done(model(weights, false)))
                    }
                }
            }
        }
    }
}

/// The upper triangle of the row-major `n x n` matrix `full`, row by row.
fn upper(full: &[f64], n: usize) -> impl Iterator<Item = f64> + '_ {
    (0..n).flat_map(move |a| full[a * n + a..(a + 1) * n].iter().copied())
}

/// The symmetric `n x n` matrix, row-major, whose upper triangle (row by
/// row) is `packed`.
fn unpack(packed: &[f64], n: usize) -> Vec<f64> {
    let mut full = vec![0.0; n * n];
    let mut values = packed.iter();
    for a in 0..n {
        for b in a..n {
            let v = *values.next().expect("n (n + 1) / 2 values");
            full[a * n + b] = v;
            full[b * n + a] = v;
        }
    }
    full
}

/// The penalized objective, gradient and Hessian at `weights` from the
/// merged log-loss sums: `C` times those, plus `1/2 |w|^2` over every
/// coefficient (not the intercepts, the first of each row of `p`).
fn penalize(
    weights: &[f64],
    loss: f64,
    mut gradient: Vec<f64>,
    mut hessian: Vec<f64>,
    c: f64,
    m: usize,
    p: usize,
) -> (f64, Vec<f64>, Vec<f64>) {
    let n = m * p;
    let mut objective = c * loss;
    gradient.iter_mut().for_each(|g| *g *= c);
    hessian.iter_mut().for_each(|h| *h *= c);
    for row in 0..m {
        for j in 1..p {
            let i = row * p + j;
            objective += 0.5 * weights[i] * weights[i];
            gradient[i] += weights[i];
            hessian[i * n + i] += 1.0;
        }
    }
    (objective, gradient, hessian)
}

/// What one Newton pass decides.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Evaluate these weights next.
    Next(Carry),
    /// Done: the converged weights.
    Converged(Vec<f64>),
    /// Done without converging: the last accepted weights, and why.
    Stopped(Vec<f64>, &'static str),
}

/// Accept or reject the weights just evaluated (Armijo backtracking), test
/// convergence, and choose the next weights: one Newton pass.
fn decide(carry: Carry, objective: f64, gradient: &[f64], hessian: &[f64], tol: f64, last: bool) -> Result<Decision> {
    let p = gradient.len() / modeled(carry.classes.len());
    if let Some(base) = &carry.base
        && (objective.is_nan() || objective > base.objective + 1e-4 * base.fraction * base.slope)
    {
        let fraction = base.fraction / 2.0;
        if last || fraction < 1e-10 {
            let why = if last { "max_iter passes" } else { "the line search found no decrease" };
            return Ok(Decision::Stopped(base.weights.clone(), why));
        }
        let weights = advance(&base.weights, &base.step, fraction, p);
        return Ok(Decision::Next(Carry { weights, base: Some(Base { fraction, ..base.clone() }), ..carry }));
    }
    let step = newton_step(hessian, gradient, p)?;
    let largest = step.iter().fold(0.0f64, |a, s| a.max(s.abs()));
    let settled = carry.base.as_ref().is_some_and(|b| {
        b.fraction == 1.0 && (b.objective - objective).abs() <= tol * objective.abs().max(f64::MIN_POSITIVE)
    });
    let next = advance(&carry.weights, &step, 1.0, p);
    if largest <= tol || settled {
        return Ok(Decision::Converged(next));
    }
    if last {
        return Ok(Decision::Stopped(carry.weights, "max_iter passes"));
    }
    let slope = gradient.iter().zip(&step).map(|(g, s)| g * s).sum();
    let base = Base { weights: carry.weights, objective, step, slope, fraction: 1.0 };
    Ok(Decision::Next(Carry { classes: carry.classes, weights: next, base: Some(base) }))
}

/// `weights + fraction * step`; with several rows, the intercepts are then
/// centred to sum to zero (the direction the objective does not see).
fn advance(weights: &[f64], step: &[f64], fraction: f64, p: usize) -> Vec<f64> {
    let mut next: Vec<f64> = weights.iter().zip(step).map(|(w, s)| w + fraction * s).collect();
    let m = next.len() / p;
    if m > 1 {
        let mean = (0..m).map(|r| next[r * p]).sum::<f64>() / m as f64;
        (0..m).for_each(|r| next[r * p] -= mean);
    }
    next
}

/// The Newton step `s` with `H s = -g` for `m = g.len() / p` weight rows.
/// For several rows, `H` is singular along `v` (1 on every intercept) and
/// `g` is orthogonal to it; `l v v^T` is added, which leaves the solution
/// orthogonal to `v` unchanged.
fn newton_step(hessian: &[f64], gradient: &[f64], p: usize) -> Result<Vec<f64>> {
    let n = gradient.len();
    let m = n / p;
    let mut h = hessian.to_vec();
    if m > 1 {
        let mean = (0..m).map(|r| h[r * p * n + r * p]).sum::<f64>() / m as f64;
        let l = if mean > 0.0 { mean } else { 1.0 };
        for a in 0..m {
            for b in 0..m {
                h[a * p * n + b * p] += l;
            }
        }
    }
    let rhs: Vec<f64> = gradient.iter().map(|g| -g).collect();
    // Near-separable data can leave the intercepts' curvature at rounding
    // level; a vanishing ridge then keeps the factorization going.
    let scale = (0..n).map(|i| h[i * n + i].abs()).fold(f64::MIN_POSITIVE, f64::max);
    for jitter in [0.0, 1e-12, 1e-10, 1e-8] {
        let mut a = h.clone();
        (0..n).for_each(|i| a[i * n + i] += jitter * scale);
        if let Ok(s) = wasmpipe_sdk::solve_spd(a, rhs.clone(), n) {
            return Ok(s);
        }
    }
    wasmpipe_sdk::fail!("the Hessian is not positive definite (features collinear with c very large?)")
}

impl Apply for Model {
    fn apply(&self, batch: Batch) -> Result<Option<Batch>> {
        let model = &self;
        let x = columns(&batch, &model.features)?;
        let margins = model
            .intercepts
            .iter()
            .zip(&model.coefficients)
            .map(|(b, w)| wasmpipe_sdk::matvec(&x.iter().collect::<Vec<_>>(), w, *b))
            .collect::<Result<Vec<_>>>()?;
        let (index, prob) = if model.multinomial {
            let (_, index) = argmax(&margins)?;
            (index, softmax(&margins)?.0)
        } else {
            // classes[1] when the margin is positive, as scikit-learn decides.
            let m = &margins[0];
            let index = m.compare(Compare::Gt, 0.0)?.cast(&DataType::Float64)?.add(&m.mul_scalar(0.0)?)?;
            (index, vec![sigmoid(&m.map(Unary::Neg)?)?, sigmoid(m)?])
        };
        // NaN and null indices become null classes.
        let index = index.cast(&DataType::Int32)?;
        let labels = match &model.classes[0] {
            Class::Int(_) => Column::from_i64(
                &model.classes.iter().map(|c| if let Class::Int(v) = c { *v } else { 0 }).collect::<Vec<_>>(),
                None,
            )?,
            Class::Str(_) => Column::from_utf8(&model.classes.iter().map(|c| Some(c.label())).collect::<Vec<_>>())?,
        };
        let mut out = batch.with_column(&model.prediction, &labels.take(&index)?)?;
        for (class, p) in model.classes.iter().zip(&prob) {
            out = out.with_column(&format!("proba_{}", class.label()), p)?;
        }
        Ok(Some(out))
    }

    /// Its columns checked; what it writes is not said: a probability
    /// column per class, and the classes are learnt.
    fn output_schema(_task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        // (The rows it predicts need no target: the fit checks that.)
        wasmpipe_sdk::numeric(input, &config()?.features)?;
        Ok(None)
    }
}

wasmpipe_sdk::export_estimator!(LogReg, Model);

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain reference of what the partitions sum (log-loss, gradient,
    /// Hessian) over rows `x` with class indices `y`, at `weights`.
    fn sums(x: &[Vec<f64>], y: &[usize], k: usize, weights: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
        let p = x[0].len() + 1;
        let m = modeled(k);
        let n = m * p;
        let (mut loss, mut g, mut h) = (0.0, vec![0.0; n], vec![0.0; n * n]);
        for (xi, &yi) in x.iter().zip(y) {
            let xt: Vec<f64> = std::iter::once(1.0).chain(xi.iter().copied()).collect();
            let margins: Vec<f64> = weights.chunks(p).map(|w| w.iter().zip(&xt).map(|(a, b)| a * b).sum()).collect();
            // Binary: the one row is class 1 against a zero margin for class 0.
            let (prob, target): (Vec<f64>, Vec<f64>) = if m == 1 {
                (vec![1.0 / (1.0 + (-margins[0]).exp())], vec![(yi == 1) as u8 as f64])
            } else {
                (softmax_row(&margins), (0..k).map(|c| (c == yi) as u8 as f64).collect())
            };
            loss += if m == 1 {
                (1.0 + margins[0].exp()).ln() - target[0] * margins[0]
            } else {
                let top = margins.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                top + margins.iter().map(|v| (v - top).exp()).sum::<f64>().ln() - margins[yi]
            };
            for a in 0..m {
                for i in 0..p {
                    g[a * p + i] += (prob[a] - target[a]) * xt[i];
                    for b in 0..m {
                        let w = prob[a] * (((a == b) as u8 as f64) - prob[b]);
                        for j in 0..p {
                            h[(a * p + i) * n + b * p + j] += w * xt[i] * xt[j];
                        }
                    }
                }
            }
        }
        (loss, g, h)
    }

    fn softmax_row(m: &[f64]) -> Vec<f64> {
        let top = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = m.iter().map(|v| (v - top).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    /// Run the Newton passes on the plain reference sums, as the stage does.
    fn fit(x: &[Vec<f64>], y: &[usize], k: usize, c: f64) -> (Vec<f64>, u32) {
        let p = x[0].len() + 1;
        let m = modeled(k);
        let classes = (0..k as i64).map(Class::Int).collect();
        let mut carry = Carry { classes, weights: vec![0.0; m * p], base: None };
        for pass in 1..100 {
            let (loss, g, h) = sums(x, y, k, &carry.weights);
            let (f, g, h) = penalize(&carry.weights, loss, g, h, c, m, p);
            match decide(carry, f, &g, &h, 1e-10, false).unwrap() {
                Decision::Next(next) => carry = next,
                Decision::Converged(w) => return (w, pass + 1),
                Decision::Stopped(_, why) => panic!("stopped: {why}"),
            }
        }
        panic!("no convergence")
    }

    /// A small overlapping data set: two features, `k` classes.
    fn data(k: usize) -> (Vec<Vec<f64>>, Vec<usize>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..60 {
            let c = i % k;
            let t = i as f64 * 0.37;
            x.push(vec![c as f64 + t.sin() * 1.3, (c as f64 * 0.7) - t.cos() * 1.1 + (i % 5) as f64 * 0.1]);
            y.push(c);
        }
        (x, y)
    }

    /// Gradient of the penalized objective at `w`, through the reference.
    fn penalized_gradient(x: &[Vec<f64>], y: &[usize], k: usize, c: f64, w: &[f64]) -> Vec<f64> {
        let p = x[0].len() + 1;
        let (loss, g, h) = sums(x, y, k, w);
        penalize(w, loss, g, h, c, modeled(k), p).1
    }

    #[test]
    fn the_reference_hessian_is_the_derivative_of_the_gradient() {
        for k in [2, 3] {
            let (x, y) = data(k);
            let p = 3;
            let m = modeled(k);
            let w: Vec<f64> = (0..m * p).map(|i| (i as f64 * 0.3).sin() * 0.5).collect();
            let (_, _, h) = sums(&x, &y, k, &w);
            let (_, g0, _) = sums(&x, &y, k, &w);
            for j in 0..m * p {
                let mut wj = w.clone();
                wj[j] += 1e-6;
                let (_, g1, _) = sums(&x, &y, k, &wj);
                for i in 0..m * p {
                    let fd = (g1[i] - g0[i]) / 1e-6;
                    assert!((fd - h[i * m * p + j]).abs() < 1e-4 * h[i * m * p + j].abs().max(1.0), "k {k} ({i},{j})");
                }
            }
        }
    }

    #[test]
    fn newton_reaches_the_penalized_optimum_binary() {
        let (x, y) = data(2);
        let (w, passes) = fit(&x, &y, 2, 0.5);
        let g = penalized_gradient(&x, &y, 2, 0.5, &w);
        assert!(g.iter().all(|v| v.abs() < 1e-9), "gradient {g:?}");
        assert!(passes < 15, "{passes} passes");
    }

    #[test]
    fn newton_reaches_the_penalized_optimum_multinomial_with_centred_intercepts() {
        let (x, y) = data(3);
        let (w, passes) = fit(&x, &y, 3, 2.0);
        let g = penalized_gradient(&x, &y, 3, 2.0, &w);
        assert!(g.iter().all(|v| v.abs() < 1e-9), "gradient {g:?}");
        assert!(passes < 20, "{passes} passes");
        let p = 3;
        for j in 0..p {
            let sum: f64 = (0..3).map(|c| w[c * p + j]).sum();
            assert!(sum.abs() < 1e-9, "column {j} of the weights sums to {sum}");
        }
    }

    #[test]
    fn a_step_that_does_not_decrease_the_objective_is_halved() {
        let classes = vec![Class::Int(0), Class::Int(1)];
        let base = Base { weights: vec![0.0, 0.0], objective: 1.0, step: vec![2.0, 4.0], slope: -1.0, fraction: 1.0 };
        let carry = Carry { classes, weights: vec![2.0, 4.0], base: Some(base) };
        match decide(carry.clone(), 1.5, &[0.0, 0.0], &[1.0, 0.0, 0.0, 1.0], 1e-8, false).unwrap() {
            Decision::Next(next) => {
                assert_eq!(next.weights, vec![1.0, 2.0]);
                assert_eq!(next.base.unwrap().fraction, 0.5);
            }
            other => panic!("{other:?}"),
        }
        let stopped = decide(carry, f64::NAN, &[0.0, 0.0], &[1.0, 0.0, 0.0, 1.0], 1e-8, true).unwrap();
        assert_eq!(stopped, Decision::Stopped(vec![0.0, 0.0], "max_iter passes"));
    }

    #[test]
    fn the_singular_intercept_direction_is_projected_out() {
        // Two rows of p = 1 (intercepts only): H = [[1, -1], [-1, 1]] is
        // singular along [1, 1]; g = [1, -1] is orthogonal to it.
        let s = newton_step(&[1.0, -1.0, -1.0, 1.0], &[1.0, -1.0], 1).unwrap();
        assert!((s[0] + 0.5).abs() < 1e-12 && (s[1] - 0.5).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn a_symmetric_matrix_packs_to_its_upper_triangle_and_back() {
        let full = vec![1.0, 2.0, 3.0, 2.0, 4.0, 5.0, 3.0, 5.0, 6.0];
        let packed: Vec<f64> = upper(&full, 3).collect();
        assert_eq!(packed, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(unpack(&packed, 3), full);
    }

    #[test]
    fn classes_sort_numbers_numerically_and_label_columns() {
        let mut v = vec![Class::Int(10), Class::Int(-2), Class::Int(3)];
        v.sort();
        assert_eq!(v, vec![Class::Int(-2), Class::Int(3), Class::Int(10)]);
        assert_eq!(Class::Str("setosa".into()).label(), "setosa");
        assert!(int_class(1.5, "t").is_err());
        assert_eq!(int_class(-4.0, "t").unwrap(), Class::Int(-4));
    }
}

//! The core of the wasmpipe stage SDK: data handles, config, logging and
//! the stage traits. Stage authors depend on `wasmpipe-sdk`, which
//! re-exports all of this with the export macros.
//!
//! (The generated export glue of each world lives in its own crate, because
//! wit-bindgen's export macros for two worlds cannot share one crate.)
//!
//! The wasmpipe stage SDK.
//!
//! A stage is a WebAssembly component that the wasmpipe host runs once per
//! partition of its input. This crate hides the generated WIT bindings behind
//! three traits, one per kind of stage, and one macro each to export them:
//!
//! * [`Transformer`] + [`export_transformer!`]: a parallel map over batches;
//! * [`Estimator`] + [`Predictor`] + [`export_estimator!`]: learn a model from
//!   every partition (partial states, merged), then apply it;
//! * [`Estimator`] + [`export_aggregator!`]: fold the input into one result,
//!   such as evaluation metrics.
//!
//! Data stays in the host: a [`Batch`] and its [`Column`]s are handles.
//! Reading metadata copies nothing; [`Column::read_f64`] and friends copy a
//! column into the guest in one call, and [`Column::from_f64`] hands values
//! back in one call.
//!
//! ```ignore
//! use wasmpipe_sdk::{Batch, Result, Task, Transformer};
//!
//! struct Double;
//! impl Transformer for Double {
//!     fn open(_task: &Task) -> Result<Self> { Ok(Double) }
//!     fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
//!         let x: Vec<f64> = batch.column("x")?.read_f64()?.iter().map(|v| v * 2.0).collect();
//!         Ok(Some(batch.with_column("x", &wasmpipe_sdk::Column::from_f64(&x, None)?)?))
//!     }
//! }
//! wasmpipe_sdk::export_transformer!(Double);
//! ```

use std::any::Any;
use std::cell::RefCell;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod bindings {
    //! Generated bindings. Stage authors never use these directly.

    /// Imports shared by every world, generated once.
    pub mod imports {
        wit_bindgen::generate!({
            path: "../../../wit",
            world: "stage-base",
            default_bindings_module: "wasmpipe_sdk_core::bindings::imports",
        });
    }
}

use bindings::imports::wasmpipe::stage::{host, types};

pub use types::{Batch, Column, DataType, Error, Field, Schema, TimeUnit};

/// Result with the stage [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Return early with [`Error::StageFailed`] and a formatted message.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::StageFailed(::std::format!($($arg)*)))
    };
}

/// Facts about the task this instance is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Pipeline name from the manifest.
    pub pipeline: String,
    /// Stage name from the manifest.
    pub stage: String,
    /// This task's partition, `0 .. partitions`.
    pub partition: u32,
    /// Number of partitions in this phase.
    pub partitions: u32,
    /// Fit pass, from 0.
    pub pass: u32,
}

impl From<host::TaskInfo> for Task {
    fn from(t: host::TaskInfo) -> Self {
        Task { pipeline: t.pipeline, stage: t.stage, partition: t.partition, partitions: t.partitions, pass: t.pass }
    }
}

/// Decode the stage's `config` table from the manifest into `T`.
///
/// Give `T` `#[serde(deny_unknown_fields)]` so that a misspelt key is an
/// error rather than a silently ignored setting.
pub fn config<T: DeserializeOwned>() -> Result<T> {
    let json = host::config();
    serde_json::from_str(&json).map_err(|e| Error::InvalidConfig(e.to_string()))
}

/// Set `rows` aside instead of passing them on, with one reason per row:
/// the host writes them to the stage's quarantine output (source, reason,
/// and the row as a JSON object), committed with the stage's output and
/// counted in the run summary. Call it from `transform` (or `close`), then
/// leave those rows out of the batch you return.
///
/// ```ignore
/// let bad: Vec<bool> = /* rows that break a rule */;
/// let reasons: Vec<String> = bad.iter().filter(|b| **b).map(|_| "age out of range".into()).collect();
/// wasmpipe_sdk::quarantine(&batch.filter_rows(&bad)?, &reasons)?;
/// let kept = batch.filter_rows(&bad.iter().map(|b| !b).collect::<Vec<_>>())?;
/// ```
pub fn quarantine(rows: &Batch, reasons: &[String]) -> Result<()> {
    if rows.num_rows() == 0 && reasons.is_empty() {
        return Ok(());
    }
    let reasons = Column::from_utf8(&reasons.iter().map(|r| Some(r.clone())).collect::<Vec<_>>())?;
    host::quarantine(rows, &reasons)
}

/// Publish the stage's report from `Estimator::finalize` (metrics, a data
/// quality report): `doc` as JSON, and `table`, the same facts as rows.
/// The host writes `_report-HASH.json` and `_report-HASH.parquet` beside
/// the output, lists them in the commit, and prints the JSON in the run
/// summary.
pub fn report<T: Serialize>(doc: &T, table: Option<&Batch>) -> Result<()> {
    let json = serde_json::to_string(doc).map_err(|e| Error::InvalidArgument(format!("cannot encode report: {e}")))?;
    host::report(&json, table)
}

/// A metrics table for [`report`]: one row per `(metric, class, value)`,
/// with `class` null for metrics of the whole data set. Columns `metric`
/// (utf8), `class` (utf8) and `value` (float64), the shape every
/// evaluation stage reports in, so that runs can be compared in one query.
pub fn metrics_table(rows: &[(String, Option<String>, f64)]) -> Result<Batch> {
    let metric = Column::from_utf8(&rows.iter().map(|r| Some(r.0.clone())).collect::<Vec<_>>())?;
    let class = Column::from_utf8(&rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>())?;
    let value = Column::from_f64(&rows.iter().map(|r| r.2).collect::<Vec<_>>(), None)?;
    Batch::from_columns(&[("metric".into(), &metric), ("class".into(), &class), ("value".into(), &value)])
}

/// Logging into the task's log, shown by the host with stage and partition.
pub mod log {
    pub use crate::bindings::imports::wasmpipe::stage::host::Level;

    /// Record `message` at `level`.
    pub fn write(level: Level, message: &str) {
        crate::bindings::imports::wasmpipe::stage::host::log(level, message);
    }
}

/// Log at info level with `format!` syntax.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, &::std::format!($($arg)*)) };
}

/// Log at warn level with `format!` syntax.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, &::std::format!($($arg)*)) };
}

/// Log at debug level with `format!` syntax.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, &::std::format!($($arg)*)) };
}

impl Batch {
    /// Copy the named column into the guest as f64 (nulls read as NaN).
    pub fn f64s(&self, name: &str) -> Result<Vec<f64>> {
        self.column(name)?.read_f64()
    }

    /// Names of the columns, in order.
    pub fn column_names(&self) -> Vec<String> {
        self.schema().into_iter().map(|f| f.name).collect()
    }

    /// Set column `name` to f64 `values` (no nulls).
    pub fn with_f64s(&self, name: &str, values: &[f64]) -> Result<Batch> {
        self.with_column(name, &Column::from_f64(values, None)?)
    }

    /// Keep the rows where `keep` is true.
    pub fn filter_rows(&self, keep: &[bool]) -> Result<Batch> {
        self.filter(&Column::from_bool(keep, None)?)
    }
}

impl Column {
    /// True at each row that is null.
    pub fn null_mask(&self) -> Vec<bool> {
        match self.validity() {
            Some(valid) => valid.into_iter().map(|v| !v).collect(),
            None => vec![false; self.len() as usize],
        }
    }
}

use bindings::imports::wasmpipe::stage::kernels as k;
pub use bindings::imports::wasmpipe::stage::kernels::{
    Arith, Compare, NewtonTerms, NormalEquations, SortKey, Summary, Unary,
};

/// Native kernels: each runs in the host, vectorized, on the handles, and
/// returns a new handle (or a small result). No values enter the guest.
/// Numeric inputs of any type are widened to f64; elementwise results
/// propagate nulls (see `wit/kernels.wit` for the exact rules).
impl Column {
    /// `self + other`, row by row.
    pub fn add(&self, other: &Column) -> Result<Column> {
        k::arith_columns(Arith::Add, self, other)
    }
    /// `self - other`, row by row.
    pub fn sub(&self, other: &Column) -> Result<Column> {
        k::arith_columns(Arith::Sub, self, other)
    }
    /// `self * other`, row by row.
    pub fn mul(&self, other: &Column) -> Result<Column> {
        k::arith_columns(Arith::Mul, self, other)
    }
    /// `self / other`, row by row (IEEE: x / 0 is ±inf).
    pub fn div(&self, other: &Column) -> Result<Column> {
        k::arith_columns(Arith::Div, self, other)
    }
    /// `self + x` for every row.
    pub fn add_scalar(&self, x: f64) -> Result<Column> {
        k::arith_scalar(Arith::Add, self, x)
    }
    /// `self - x` for every row.
    pub fn sub_scalar(&self, x: f64) -> Result<Column> {
        k::arith_scalar(Arith::Sub, self, x)
    }
    /// `self * x` for every row.
    pub fn mul_scalar(&self, x: f64) -> Result<Column> {
        k::arith_scalar(Arith::Mul, self, x)
    }
    /// `self / x` for every row.
    pub fn div_scalar(&self, x: f64) -> Result<Column> {
        k::arith_scalar(Arith::Div, self, x)
    }
    /// Boolean mask of `self op x` (IEEE: NaN compares false, `ne` true).
    pub fn compare(&self, op: Compare, x: f64) -> Result<Column> {
        k::compare_scalar(op, self, x)
    }
    /// Boolean mask of `self op other`, row by row.
    pub fn compare_column(&self, op: Compare, other: &Column) -> Result<Column> {
        k::compare_columns(op, self, other)
    }
    /// Mask AND (Kleene).
    pub fn and(&self, other: &Column) -> Result<Column> {
        k::and(self, other)
    }
    /// Mask OR (Kleene).
    pub fn or(&self, other: &Column) -> Result<Column> {
        k::or(self, other)
    }
    /// Mask NOT.
    pub fn not(&self) -> Result<Column> {
        k::not(self)
    }
    /// True where the row is null.
    pub fn is_null(&self) -> Column {
        k::is_null(self)
    }
    /// True where the value is NaN.
    pub fn is_nan(&self) -> Result<Column> {
        k::is_nan(self)
    }
    /// Count, sum, mean, sum of squared deviations, min and max of the
    /// non-null, non-NaN values.
    pub fn summarize(&self) -> Result<Summary> {
        k::summarize(self)
    }
    /// Sum of `self[i] * other[i]` over rows where both are non-null.
    pub fn dot(&self, other: &Column) -> Result<f64> {
        k::dot(self, other)
    }
}

impl Summary {
    /// Combine the summaries of two disjoint sets of rows (Chan et al.'s
    /// pairwise update): the result is the summary of their union, as if
    /// computed in one pass.
    pub fn merge(self, other: Summary) -> Summary {
        if self.count == 0 {
            return Summary { nulls: self.nulls + other.nulls, nans: self.nans + other.nans, ..other };
        }
        if other.count == 0 {
            return Summary { nulls: self.nulls + other.nulls, nans: self.nans + other.nans, ..self };
        }
        let count = self.count + other.count;
        let delta = other.mean - self.mean;
        let (a, b) = (self.count as f64, other.count as f64);
        Summary {
            count,
            nulls: self.nulls + other.nulls,
            nans: self.nans + other.nans,
            sum: self.sum + other.sum,
            mean: self.mean + delta * (b / count as f64),
            m2: self.m2 + other.m2 + delta * delta * (a * b / count as f64),
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }

    /// Population variance (`m2 / count`); 0 for no rows.
    pub fn variance(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.m2 / self.count as f64 }
    }
}

/// More native kernels: math, conversion, selection, hashing.
impl Column {
    /// `op(x)` for every row (neg, abs, sqrt, exp, ln).
    pub fn map(&self, op: Unary) -> Result<Column> {
        k::map_unary(op, self)
    }
    /// `x ^ exponent` for every row.
    pub fn pow(&self, exponent: f64) -> Result<Column> {
        k::pow(self, exponent)
    }
    /// Every value limited to `[lo, hi]`.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Column> {
        k::clamp(self, lo, hi)
    }
    /// The column as `to` (values that do not fit become null).
    pub fn cast(&self, to: &DataType) -> Result<Column> {
        k::cast(self, to)
    }
    /// `(x - center) / scale` for every row, in one pass.
    pub fn standardize(&self, center: f64, scale: f64) -> Result<Column> {
        k::standardize(self, center, scale)
    }
    /// Nulls replaced by `value`.
    pub fn fill_null(&self, value: f64) -> Result<Column> {
        k::fill_null(self, value)
    }
    /// `self ? then : otherwise`, for a boolean mask.
    pub fn choose(&self, then: &Column, otherwise: &Column) -> Result<Column> {
        k::if_then_else(self, then, otherwise)
    }
    /// The rows where `mask` is true.
    pub fn filter_by(&self, mask: &Column) -> Result<Column> {
        k::filter(self, mask)
    }
    /// The rows at `indices`, in that order.
    pub fn take(&self, indices: &Column) -> Result<Column> {
        k::take(self, indices)
    }
    /// Counts in `bins` equal-width bins over `[lo, hi]`.
    pub fn histogram(&self, bins: u32, lo: f64, hi: f64) -> Result<Vec<u64>> {
        k::histogram(self, bins, lo, hi)
    }
    /// Number of distinct non-null values.
    pub fn distinct_count(&self) -> Result<u64> {
        k::distinct_count(self)
    }
}

/// `a * x + y`, row by row.
pub fn axpy(a: f64, x: &Column, y: &Column) -> Result<Column> {
    k::axpy(a, x, y)
}

/// The columns one after another.
pub fn concat(columns: &[&Column]) -> Result<Column> {
    k::concat(columns)
}

/// Row indices that sort by `columns` under `keys` (stable).
pub fn sort_to_indices(columns: &[&Column], keys: &[SortKey]) -> Result<Column> {
    k::sort_to_indices(columns, keys)
}

/// A stable 64-bit hash of each row over `columns`.
pub fn hash_rows(columns: &[&Column], seed: u64) -> Result<Column> {
    k::hash_rows(columns, seed)
}

/// X^T X and X^T y over the rows where every feature and the target are
/// non-null and finite; `intercept` prepends a column of ones.
pub fn gram(features: &[&Column], target: &Column, intercept: bool) -> Result<NormalEquations> {
    k::gram(features, target, intercept)
}

/// `bias + sum_j weights[j] * columns[j]`, row by row.
pub fn matvec(columns: &[&Column], weights: &[f64], bias: f64) -> Result<Column> {
    k::matvec(columns, weights, bias)
}

/// Loss, gradient and Hessian of (multinomial) logistic regression at
/// `weights`, over the rows where every feature is finite and the target
/// is present and not NaN, in one pass on the host: with two `classes`,
/// one weight row `[b, w..]` for `classes[1]`; with more, one per class
/// (softmax). Partial results of batches add up.
pub fn logistic_newton(features: &[&Column], target: &Column, classes: &[f64], weights: &[f64]) -> Result<NewtonTerms> {
    k::logistic_newton(features, target, classes, weights)
}
/// Solve `A x = b` for symmetric positive definite `A` (row-major n x n) by
/// Cholesky decomposition on the host (kernel `solve-spd`): the normal
/// equations of least squares, Newton steps. `Err(j)` when `A` is not positive definite, `j` being the first
/// column whose pivot is not positive (a feature collinear with earlier
/// ones, for a Gram matrix).
pub fn solve_spd(a: Vec<f64>, b: Vec<f64>, n: usize) -> std::result::Result<Vec<f64>, usize> {
    assert!(a.len() == n * n && b.len() == n, "solve_spd: a must be n x n and b of length n (n = {n})");
    #[cfg(target_arch = "wasm32")]
    match k::solve_spd(&a, &b) {
        Ok(solved) => solved.map_err(|j| j as usize),
        Err(e) => panic!("solve_spd: {e:?}"),
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let mut a = a;
        wasmpipe_simd::solve_spd(&mut a, &b, &|| false).expect("never stopped")
    }
}

/// Encode a model for the host. JSON: readable in the object store and
/// by other tools, exact for f64 (shortest round-trip form).
#[doc(hidden)]
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::InvalidArgument(format!("cannot encode model: {e}")))
}

#[doc(hidden)]
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::InvalidArgument(format!("cannot decode {what}: {e}")))
}

/// Encode a partial state or a carry, which only this stage reads back:
/// MessagePack, compact (an f64 in 9 bytes, not ~20 characters) and fast
/// to write and read, exact for every f64 (NaN and infinities too), and
/// self-describing, so every serde type a state may hold round-trips.
/// Structs are maps by field name, so that fields skipped when empty
/// (`skip_serializing_if`) or defaulted read back as in JSON.
#[doc(hidden)]
pub fn encode_state<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(|e| Error::InvalidArgument(format!("cannot encode state: {e}")))
}

#[doc(hidden)]
pub fn decode_state<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::InvalidArgument(format!("cannot decode {what}: {e}")))
}

/// A parallel map: one instance per partition sees its batches in order.
pub trait Transformer: Sized + 'static {
    /// Start a task: read configuration, set up state.
    fn open(task: &Task) -> Result<Self>;
    /// Map one batch to zero or one batch.
    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>>;
    /// End the task; may emit a final batch.
    fn close(&mut self) -> Result<Option<Batch>> {
        Ok(None)
    }
}

/// What [`Estimator::finalize`] decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<M, C> {
    /// Fitting is done; this is the model (or an aggregator's result).
    Done(M),
    /// Run another pass; every partition's next `begin` receives this.
    NextPass(C),
}

/// Learns from data: fold each partition into a `State`, merge states,
/// finalize. Iterative estimators return [`Outcome::NextPass`] with a
/// `Carry` (e.g. current weights) until they converge.
pub trait Estimator: 'static {
    /// One partition's partial state. Must merge associatively.
    type State: Serialize + DeserializeOwned;
    /// What one pass hands the next; `()` for single-pass estimators.
    type Carry: Serialize + DeserializeOwned;
    /// The finished model, or for an aggregator its result.
    type Model: Serialize + DeserializeOwned;

    /// The empty state for one partition in `task.pass`.
    fn begin(task: &Task, carry: Option<Self::Carry>) -> Result<Self::State>;
    /// Fold one batch into the state.
    fn update(state: &mut Self::State, batch: &Batch) -> Result<()>;
    /// Combine two partial states.
    fn merge(left: Self::State, right: Self::State) -> Result<Self::State>;
    /// Finish pass `pass` from the fully merged state.
    fn finalize(state: Self::State, pass: u32) -> Result<Outcome<Self::Model, Self::Carry>>;
    /// The most passes this fit may take with its configuration ([`config`]),
    /// the first included: an iterative estimator's `max_iter`, say. The
    /// host refuses, before any data moves, a configuration that may take
    /// more than the stage's `max_passes` limit, rather than stop the fit
    /// at the limit after all those passes. `None`, the default, says its
    /// passes are not bounded by its configuration (one pass, or until it
    /// converges).
    fn fit_passes(_task: &Task) -> Result<Option<u32>> {
        Ok(None)
    }
}

/// The transform half of an estimator: applies the fitted model. A model
/// that needs nothing set up per task implements [`Apply`] instead, and is
/// its own predictor.
pub trait Predictor: Sized + 'static {
    /// The model type, as the estimator produced it.
    type Model: DeserializeOwned;
    /// Start a task with the fitted model.
    fn open(task: &Task, model: Self::Model) -> Result<Self>;
    /// Map one batch with the model.
    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>>;
    /// The schema of the rows [`Predictor::transform`] writes for rows of
    /// schema `input`, said before the model exists: the host checks the
    /// stages after this one against it before any data moves. Read the
    /// configuration with [`config`] and raise what a task would for such
    /// input (a missing column: [`field`]; a column of a type it does not
    /// take: [`numeric`]). `None`, the default, says it depends on the data
    /// (a column per class found, say); the stages after it are then
    /// checked against their columns when they read them.
    fn output_schema(_task: &Task, _input: &[Field]) -> Result<Option<Schema>> {
        Ok(None)
    }
}

/// A model that applies itself to each batch: the [`Predictor`] of most
/// estimators, with nothing to set up per task. Export the model type as
/// the predictor: `export_estimator!(MyEstimator, MyModel)`.
pub trait Apply: DeserializeOwned + 'static {
    /// Map one batch with the model.
    fn apply(&self, batch: Batch) -> Result<Option<Batch>>;
    /// [`Predictor::output_schema`].
    fn output_schema(_task: &Task, _input: &[Field]) -> Result<Option<Schema>> {
        Ok(None)
    }
}

impl<M: Apply> Predictor for M {
    type Model = M;

    fn open(_task: &Task, model: M) -> Result<M> {
        Ok(model)
    }

    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
        self.apply(batch)
    }

    fn output_schema(task: &Task, input: &[Field]) -> Result<Option<Schema>> {
        M::output_schema(task, input)
    }
}

/// The field of `input` named `name`, or the `column-not-found` error a
/// task would raise reading it.
pub fn field<'a>(input: &'a [Field], name: &str) -> Result<&'a Field> {
    input.iter().find(|f| f.name == name).ok_or_else(|| {
        let names: Vec<&str> = input.iter().map(|f| f.name.as_str()).collect();
        Error::ColumnNotFound(format!("{name:?} (the input has {})", names.join(", ")))
    })
}

/// Check that each of `names` is a column of `input` that holds numbers
/// (of any width, decimals included) or booleans (read as 0 and 1), as the
/// numeric kernels take: the `column-not-found` or `type-mismatch` error a
/// task would raise, if not.
pub fn numeric(input: &[Field], names: &[String]) -> Result<()> {
    for name in names {
        match &field(input, name)?.data_type {
            DataType::Boolean | DataType::Int32 | DataType::Int64 | DataType::Float32 | DataType::Float64 => {}
            // Arrow's other numeric types, by name: Int8, UInt64, Float16,
            // Decimal128(10, 2)...
            DataType::Other(arrow) if ["Int", "UInt", "Float", "Decimal"].iter().any(|p| arrow.starts_with(p)) => {}
            other => {
                return Err(Error::TypeMismatch(format!(
                    "column {name:?} is {}, but the stage takes numbers",
                    type_name(other)
                )));
            }
        }
    }
    Ok(())
}

/// A WIT data type's name, as people write it.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "boolean".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Utf8 => "utf8".into(),
        DataType::Timestamp(_) => "a timestamp".into(),
        DataType::Other(name) => name.clone(),
    }
}

/// `input` with a column `name` of `data_type` in place of the column of
/// that name, or after the others: the schema [`Batch::with_column`] makes.
pub fn with_field(input: &[Field], name: &str, data_type: DataType) -> Schema {
    let mut out = input.to_vec();
    let field = Field { name: name.to_string(), data_type, nullable: true };
    match out.iter_mut().find(|f| f.name == name) {
        Some(f) => *f = field,
        None => out.push(field),
    }
    out
}

thread_local! {
    /// The live instance state between calls: the transformer, predictor or
    /// partial fit state of the current task. Components are single-threaded.
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

#[doc(hidden)]
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        log::write(log::Level::Error, &format!("panic: {info}"));
    }));
}

#[doc(hidden)]
pub fn with_state<T: 'static, R>(f: impl FnOnce(&mut T) -> Result<R>) -> Result<R> {
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut().and_then(|b| b.downcast_mut::<T>()) {
            Some(state) => f(state),
            None => Err(Error::InvalidArgument("stage called before open".into())),
        }
    })
}

#[doc(hidden)]
pub fn take_state<T: 'static>() -> Result<T> {
    STATE.with(|cell| {
        cell.borrow_mut()
            .take()
            .and_then(|b| b.downcast::<T>().ok())
            .map(|b| *b)
            .ok_or_else(|| Error::InvalidArgument("stage closed before open".into()))
    })
}

#[doc(hidden)]
pub fn put_state<T: 'static>(value: T) {
    STATE.with(|cell| *cell.borrow_mut() = Some(Box::new(value)));
}

#[doc(hidden)]
pub mod glue {
    //! Shared adapter logic for the world crates' export glue.
    use super::*;
    pub use bindings::imports::wasmpipe::stage::host::TaskInfo;

    /// `transform.open` for a [`Transformer`].
    pub fn transformer_open<T: Transformer>(task: TaskInfo) -> Result<()> {
        install_panic_hook();
        let stage = T::open(&task.into())?;
        put_state(stage);
        Ok(())
    }

    /// `transform.open` for a [`Predictor`]: decodes the model first.
    pub fn predictor_open<P: Predictor>(task: TaskInfo, model: Option<Vec<u8>>) -> Result<()> {
        install_panic_hook();
        let Some(model) = model else {
            return Err(Error::InvalidArgument("estimator opened for transform without a model".into()));
        };
        let model: P::Model = decode(&model, "model")?;
        put_state(P::open(&task.into(), model)?);
        Ok(())
    }

    /// `describe.output-schema` for a [`Predictor`].
    pub fn predictor_output_schema<P: Predictor>(task: TaskInfo, input: Schema) -> Result<Option<Schema>> {
        install_panic_hook();
        P::output_schema(&task.into(), &input)
    }

    /// `describe.fit-passes` for an [`Estimator`].
    pub fn estimator_fit_passes<E: Estimator>(task: TaskInfo) -> Result<Option<u32>> {
        install_panic_hook();
        E::fit_passes(&task.into())
    }

    /// `fit.fit-open`.
    pub fn fit_open<E: Estimator>(task: TaskInfo, carry: Option<Vec<u8>>) -> Result<()> {
        install_panic_hook();
        let carry = carry.map(|c| decode_state::<E::Carry>(&c, "carry")).transpose()?;
        put_state(E::begin(&task.into(), carry)?);
        Ok(())
    }

    /// `fit.fit-batch`.
    pub fn fit_batch<E: Estimator>(input: Batch) -> Result<()> {
        with_state::<E::State, _>(|s| E::update(s, &input))
    }

    /// `fit.fit-close`.
    pub fn fit_close<E: Estimator>() -> Result<Vec<u8>> {
        encode_state(&take_state::<E::State>()?)
    }

    /// `fit.merge`.
    pub fn merge<E: Estimator>(left: Vec<u8>, right: Vec<u8>) -> Result<Vec<u8>> {
        install_panic_hook();
        let merged = E::merge(decode_state(&left, "state")?, decode_state(&right, "state")?)?;
        encode_state(&merged)
    }

    /// `fit.finalize`, with the outcome's payload encoded.
    pub fn finalize<E: Estimator>(state: Vec<u8>, pass: u32) -> Result<Outcome<Vec<u8>, Vec<u8>>> {
        install_panic_hook();
        Ok(match E::finalize(decode_state(&state, "state")?, pass)? {
            Outcome::Done(model) => Outcome::Done(encode(&model)?),
            Outcome::NextPass(carry) => Outcome::NextPass(encode_state(&carry)?),
        })
    }
}

/// Implement a world's generated `fit` `Guest` trait for an adapter type by
/// forwarding to [`glue`]; the aggregator and estimator glue crates share it.
/// `$fit` is the world's `fit` export module; `E` must be the estimator.
#[doc(hidden)]
#[macro_export]
macro_rules! __impl_fit_guest {
    ([$($gen:tt)*] $ty:ty, $($fit:ident)::+) => {
        impl<$($gen)*> $($fit)::+::Guest for $ty {
            fn fit_open(task: $crate::glue::TaskInfo, carry: Option<Vec<u8>>) -> $crate::Result<()> {
                $crate::glue::fit_open::<E>(task, carry)
            }
            fn fit_batch(input: $crate::Batch) -> $crate::Result<()> {
                $crate::glue::fit_batch::<E>(input)
            }
            fn fit_close() -> $crate::Result<Vec<u8>> {
                $crate::glue::fit_close::<E>()
            }
            fn merge(left: Vec<u8>, right: Vec<u8>) -> $crate::Result<Vec<u8>> {
                $crate::glue::merge::<E>(left, right)
            }
            fn finalize(state: Vec<u8>, pass: u32) -> $crate::Result<$($fit)::+::FitOutcome> {
                Ok(match $crate::glue::finalize::<E>(state, pass)? {
                    $crate::Outcome::Done(m) => $($fit)::+::FitOutcome::Done(m),
                    $crate::Outcome::NextPass(c) => $($fit)::+::FitOutcome::NextPass(c),
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_and_states_round_trip_exactly() {
        let values = vec![0.1, 1.0 / 3.0, f64::MAX, f64::MIN_POSITIVE, -0.0, 123456789.12345679, 2.0f64.powi(-1074)];
        let bits = |v: &[f64]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let model: Vec<f64> = decode(&encode(&values).unwrap(), "model").unwrap();
        assert_eq!(bits(&model), bits(&values));
        // States also keep what JSON cannot: NaN and infinities.
        let special = [values.clone(), vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]].concat();
        let bytes = encode_state(&special).unwrap();
        assert!(bytes.len() <= 1 + 9 * special.len(), "{} bytes", bytes.len());
        let state: Vec<f64> = decode_state(&bytes, "state").unwrap();
        assert_eq!(bits(&state), bits(&special));
    }

    #[test]
    fn untagged_and_nested_state_types_round_trip() {
        use serde::Deserialize;

        #[derive(Debug, PartialEq, Serialize, Deserialize, PartialOrd, Eq, Ord)]
        #[serde(untagged)]
        enum Class {
            Int(i64),
            Str(String),
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        enum State {
            Classes {
                classes: std::collections::BTreeSet<Class>,
                rows: u64,
            },
            Sums(Vec<f64>, Option<String>),
            Tally {
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                seen: Vec<u64>,
                total: u64,
            },
        }
        for state in [
            State::Classes { classes: [Class::Int(3), Class::Str("cat".into())].into(), rows: 7 },
            State::Sums(vec![1.5, -2.0], None),
            State::Tally { seen: vec![], total: 3 },
            State::Tally { seen: vec![1], total: 3 },
        ] {
            let back: State = decode_state(&encode_state(&state).unwrap(), "state").unwrap();
            assert_eq!(back, state);
        }
        let err = decode_state::<State>(b"{not msgpack", "state").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(m) if m.starts_with("cannot decode state")));
    }

    #[test]
    fn undecodable_bytes_are_an_invalid_argument_naming_what() {
        match decode::<Vec<f64>>(b"{not json", "carry") {
            Err(Error::InvalidArgument(m)) => assert!(m.starts_with("cannot decode carry"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn task_info_converts() {
        let info = host::TaskInfo { pipeline: "p".into(), stage: "s".into(), partition: 2, partitions: 5, pass: 1 };
        assert_eq!(
            Task::from(info),
            Task { pipeline: "p".into(), stage: "s".into(), partition: 2, partitions: 5, pass: 1 }
        );
    }

    #[test]
    fn instance_state_is_typed() {
        put_state(41u32);
        with_state::<u32, _>(|v| {
            *v += 1;
            Ok(())
        })
        .unwrap();
        assert!(matches!(with_state::<String, _>(|_| Ok(())), Err(Error::InvalidArgument(_))));
        assert_eq!(take_state::<u32>().unwrap(), 42);
        assert!(take_state::<u32>().is_err(), "taken once");
    }

    fn summary(xs: &[f64]) -> Summary {
        let count = xs.len() as u64;
        let sum: f64 = xs.iter().sum();
        let mean = if count == 0 { 0.0 } else { sum / count as f64 };
        let m2 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Summary { count, nulls: 0, nans: 0, sum, mean, m2, min, max }
    }

    #[test]
    fn merged_summaries_equal_the_summary_of_the_union() {
        let xs: Vec<f64> = (0..500).map(|i| (i as f64 * 0.7).cos() * 100.0 + 1e5).collect();
        let whole = summary(&xs);
        let merged = xs.chunks(37).map(summary).fold(summary(&[]), Summary::merge);
        assert_eq!((merged.count, merged.min, merged.max), (whole.count, whole.min, whole.max));
        assert!((merged.mean - whole.mean).abs() < 1e-9 * whole.mean);
        assert!((merged.variance() - whole.variance()).abs() < 1e-9 * whole.variance());
    }

    #[test]
    fn fail_macro_returns_a_stage_error() {
        fn f(n: u32) -> Result<()> {
            crate::fail!("bad n = {n}");
        }
        assert!(matches!(f(3), Err(Error::StageFailed(m)) if m == "bad n = 3"));
    }
}

//! Host side of the `kernels` import: arithmetic, comparisons, masks,
//! statistics and the linear algebra of model training, on columns that
//! stay in the host. Elementwise work uses arrow's compute kernels; the
//! reductions arrow lacks (dot, Gram matrix, fused moments) live in
//! [`simd`].

pub use wasmpipe_simd as simd;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array};
use arrow::buffer::NullBuffer;
use arrow::compute::kernels::{boolean, cmp, numeric};
use arrow::datatypes::DataType as ArrowType;
use wasmtime::Result;
use wasmtime::component::Resource;

use crate::bindings::DataType;
use crate::bindings::WitError;
use crate::bindings::wasmpipe::stage::kernels::{
    self, Arith, Compare, NewtonTerms, NormalEquations as Gram, SortKey, Summary as Moments, Unary,
};
use crate::budget::Ticker;
use crate::host::{ColumnHandle, StageState};

type KernelResult<T> = std::result::Result<T, WitError>;

fn arrow_err(e: arrow::error::ArrowError) -> WitError {
    WitError::InvalidArgument(e.to_string())
}

/// Widen a numeric or boolean column to float64.
fn as_f64(array: &ArrayRef) -> KernelResult<Arc<Float64Array>> {
    match array.data_type() {
        ArrowType::Float64 => {}
        ArrowType::Boolean | ArrowType::Int32 | ArrowType::Int64 | ArrowType::Float32 => {}
        ArrowType::Int8 | ArrowType::Int16 | ArrowType::UInt8 | ArrowType::UInt16 | ArrowType::UInt32 => {}
        ArrowType::UInt64 | ArrowType::Float16 => {}
        other => return Err(WitError::TypeMismatch(format!("expected a numeric column, found {other}"))),
    }
    let cast = arrow::compute::cast(array, &ArrowType::Float64).map_err(arrow_err)?;
    Ok(Arc::new(cast.as_any().downcast_ref::<Float64Array>().expect("cast to f64").clone()))
}

fn as_bool(array: &ArrayRef) -> KernelResult<&BooleanArray> {
    array
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| WitError::TypeMismatch(format!("expected a boolean mask, found {}", array.data_type())))
}

fn same_len(a: &dyn Array, b: &dyn Array) -> KernelResult<()> {
    if a.len() != b.len() {
        return Err(WitError::LengthMismatch(format!("{} rows against {}", a.len(), b.len())));
    }
    Ok(())
}

/// True where a value is NaN (nulls: false), with no nulls of its own.
fn nan_mask(values: &Float64Array) -> BooleanArray {
    BooleanArray::from_iter(values.iter().map(|v| Some(v.is_some_and(f64::is_nan))))
}

fn arith(op: Arith, left: &Float64Array, right: &dyn arrow::array::Datum) -> KernelResult<ArrayRef> {
    let f = match op {
        Arith::Add => numeric::add,
        Arith::Sub => numeric::sub,
        Arith::Mul => numeric::mul,
        Arith::Div => numeric::div,
    };
    f(&left, right).map_err(arrow_err)
}

/// Compare with IEEE semantics: arrow orders NaN above every number and
/// equal to itself; a NaN operand here gives false (true for `ne`).
fn compare(
    op: Compare,
    left: &Float64Array,
    right: &dyn arrow::array::Datum,
    right_nan: Option<BooleanArray>,
) -> KernelResult<ArrayRef> {
    let raw = match op {
        Compare::Eq => cmp::eq(&left, right),
        Compare::Ne => cmp::neq(&left, right),
        Compare::Lt => cmp::lt(&left, right),
        Compare::Le => cmp::lt_eq(&left, right),
        Compare::Gt => cmp::gt(&left, right),
        Compare::Ge => cmp::gt_eq(&left, right),
    }
    .map_err(arrow_err)?;
    let mut nan = nan_mask(left);
    if let Some(r) = right_nan {
        nan = boolean::or(&nan, &r).map_err(arrow_err)?;
    }
    let fixed = if op == Compare::Ne {
        // Null rows stay null: OR with a null-free mask keeps them null only
        // where both are not true, so restore the input nulls explicitly.
        let ored = boolean::or(&raw, &nan).map_err(arrow_err)?;
        BooleanArray::new(ored.values().clone(), raw.nulls().cloned())
    } else {
        boolean::and(&raw, &boolean::not(&nan).map_err(arrow_err)?).map_err(arrow_err)?
    };
    Ok(Arc::new(fixed))
}

/// Moments of the non-null, non-NaN values.
pub fn moments(values: &Float64Array) -> Moments {
    let nulls = values.null_count() as u64;
    let raw = values.values();
    // Fast path, two passes: a vectorized sum (NaN-free data has a non-NaN
    // sum), then squared deviations, min and max together.
    if nulls == 0 {
        let sum = simd::sum(raw);
        if !sum.is_nan() && !raw.is_empty() {
            let mean = sum / raw.len() as f64;
            let (m2, min, max) = simd::deviations(raw, mean);
            return Moments { count: raw.len() as u64, nulls, nans: 0, sum, mean, m2, min, max };
        }
    }
    let counted = |i: usize| values.is_valid(i) && !raw[i].is_nan();
    let nans = (0..raw.len()).filter(|&i| values.is_valid(i) && raw[i].is_nan()).count() as u64;
    let (mut count, mut sum) = (0u64, 0.0f64);
    for (i, &v) in raw.iter().enumerate() {
        if counted(i) {
            count += 1;
            sum += v;
        }
    }
    if count == 0 {
        return Moments { count, nulls, nans, sum: 0.0, mean: 0.0, m2: 0.0, min: f64::NAN, max: f64::NAN };
    }
    let mean = sum / count as f64;
    let (mut m2, mut min, mut max) = (0.0, f64::INFINITY, f64::NEG_INFINITY);
    for (i, &v) in raw.iter().enumerate() {
        if counted(i) {
            m2 += (v - mean) * (v - mean);
            min = min.min(v);
            max = max.max(v);
        }
    }
    Moments { count, nulls, nans, sum, mean, m2, min, max }
}

/// Bytes an elementwise kernel's output over `rows` rows may take: eight
/// a value and its validity bit, plus room for a widening cast of its
/// input on the way.
fn elementwise_bytes(rows: usize) -> usize {
    rows.saturating_mul(17)
}

/// Bytes of the part of `array` a copy reads (a slice's own rows, not its
/// parent's).
fn slice_bytes(array: &dyn Array) -> usize {
    array.to_data().get_slice_memory_size().unwrap_or_else(|_| array.get_array_memory_size())
}

impl StageState {
    /// The array behind a handle. Every kernel starts here, so this is also
    /// where a kernel call past the deadline stops.
    fn array(&mut self, handle: &Resource<ColumnHandle>) -> Result<ArrayRef> {
        self.budget.check_time()?;
        Ok(self.table.get(handle)?.0.clone())
    }

    /// A column as float64, with room checked for an elementwise output of
    /// its length (and for the cast, when it needs one).
    fn f64_column(&mut self, handle: &Resource<ColumnHandle>) -> Result<KernelResult<Arc<Float64Array>>> {
        let array = self.array(handle)?;
        self.budget.reserve(elementwise_bytes(array.len()))?;
        let cast = as_f64(&array);
        if let Ok(c) = &cast
            && array.data_type() != &ArrowType::Float64
        {
            // A new array, held while the kernel runs: a kernel over many
            // handles to one int column holds as many casts.
            self.budget.claim(c.as_ref())?;
        }
        Ok(cast)
    }

    /// Combine two boolean masks of equal length with `op`.
    fn mask_pair(
        &mut self,
        left: &Resource<ColumnHandle>,
        right: &Resource<ColumnHandle>,
        op: fn(&BooleanArray, &BooleanArray) -> std::result::Result<BooleanArray, arrow::error::ArrowError>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let (l, r) = (self.array(left)?, self.array(right)?);
        self.budget.reserve(elementwise_bytes(l.len()))?;
        let out = as_bool(&l).and_then(|l| {
            as_bool(&r).and_then(|r| {
                same_len(l, r)?;
                op(l, r).map(|m| Arc::new(m) as ArrayRef).map_err(arrow_err)
            })
        });
        self.push_kernel_column(out)
    }

    fn push_kernel_column(&mut self, r: KernelResult<ArrayRef>) -> Result<KernelResult<Resource<ColumnHandle>>> {
        Ok(match r {
            Ok(a) => Ok(self.push_column(a)?),
            Err(e) => Err(e),
        })
    }
}

/// Columns as f64 with their rows restricted to those where every column is
/// non-null and finite; borrowed when no row is dropped (`all_finite`, as
/// the caller found).
fn finite_rows(columns: &[Arc<Float64Array>], all_finite: bool) -> (u64, Vec<Vec<f64>>, bool) {
    let n = columns.first().map_or(0, |c| c.len());
    if all_finite {
        return (n as u64, Vec::new(), true);
    }
    let keep: Vec<bool> = (0..n).map(|i| columns.iter().all(|c| c.is_valid(i) && c.value(i).is_finite())).collect();
    let filtered =
        columns.iter().map(|c| c.values().iter().zip(&keep).filter(|(_, k)| **k).map(|(v, _)| *v).collect()).collect();
    (keep.iter().filter(|k| **k).count() as u64, filtered, false)
}

/// Whether every value of every column is non-null and finite.
fn all_finite(columns: &[Arc<Float64Array>]) -> bool {
    columns.iter().all(|c| c.null_count() == 0 && c.values().iter().all(|v| v.is_finite()))
}

/// The Arrow type for a WIT data type, for `cast`.
fn arrow_type(t: &DataType) -> KernelResult<ArrowType> {
    crate::host::arrow_type(t).ok_or_else(|| {
        let name = match t {
            DataType::Other(name) => name.as_str(),
            _ => "that type",
        };
        WitError::TypeMismatch(format!("cannot cast to {name}"))
    })
}

/// `f(x)` for every value, keeping nulls.
fn map_f64(values: &Float64Array, f: impl Fn(f64) -> f64) -> ArrayRef {
    Arc::new(values.unary::<_, arrow::datatypes::Float64Type>(f))
}

/// Whether `hash-rows` takes a column of type `t`: those [`hash_bytes`]
/// reads, and `Null` (every row null).
fn hashable(t: &ArrowType) -> bool {
    matches!(
        t,
        ArrowType::Null
            | ArrowType::Boolean
            | ArrowType::Int32
            | ArrowType::Int64
            | ArrowType::Float32
            | ArrowType::Float64
            | ArrowType::Utf8
    )
}

/// Append row `i` of `array` to `buf` for hashing: a tag byte (null or
/// value) and the value's bytes.
fn hash_bytes(array: &dyn Array, i: usize, buf: &mut Vec<u8>) -> KernelResult<()> {
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::{Float32Type, Float64Type, Int32Type, Int64Type};
    if array.is_null(i) {
        buf.push(0);
        return Ok(());
    }
    buf.push(1);
    match array.data_type() {
        ArrowType::Boolean => buf.push(u8::from(array.as_boolean().value(i))),
        ArrowType::Int32 => buf.extend_from_slice(&i64::from(array.as_primitive::<Int32Type>().value(i)).to_le_bytes()),
        ArrowType::Int64 => buf.extend_from_slice(&array.as_primitive::<Int64Type>().value(i).to_le_bytes()),
        ArrowType::Float32 => {
            buf.extend_from_slice(&f64::from(array.as_primitive::<Float32Type>().value(i)).to_le_bytes())
        }
        ArrowType::Float64 => buf.extend_from_slice(&array.as_primitive::<Float64Type>().value(i).to_le_bytes()),
        ArrowType::Utf8 => {
            let s = array.as_any().downcast_ref::<StringArray>().expect("utf8").value(i);
            buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        other => return Err(WitError::TypeMismatch(format!("cannot hash a {other} column"))),
    }
    Ok(())
}

/// Most sort keys `sort-to-indices` takes: Arrow's sort runs to the end
/// once started, and with many keys equal rows cost a comparison each.
pub const MAX_SORT_KEYS: usize = 16;

/// Bytes `take` of `indices` from `values` produces: the indices' count of
/// values, and for text the bytes of every string taken (one long string
/// taken a million times is a million copies).
fn take_bytes(values: &dyn Array, indices: &dyn Array) -> usize {
    use arrow::array::{AsArray, StringArray};
    let fixed = indices.len().saturating_mul(17);
    let Some(strings) = values.as_any().downcast_ref::<StringArray>() else {
        return fixed;
    };
    let Ok(idx) = arrow::compute::cast(indices, &ArrowType::UInt64) else {
        return fixed;
    };
    let idx = idx.as_primitive::<arrow::datatypes::UInt64Type>();
    idx.iter()
        .flatten()
        .filter(|&i| (i as usize) < strings.len())
        .fold(fixed, |acc, i| acc.saturating_add(strings.value_length(i as usize) as usize))
}

/// Row `i` of a fixed-width column as the 64 bits `hash_rows` hashes it by
/// (integers widened to i64, floats to f64), for an exact distinct count;
/// `None` for a null.
fn value_bits(array: &dyn Array, i: usize) -> KernelResult<Option<u64>> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float32Type, Float64Type, Int32Type, Int64Type};
    if array.is_null(i) {
        return Ok(None);
    }
    Ok(Some(match array.data_type() {
        ArrowType::Boolean => u64::from(array.as_boolean().value(i)),
        ArrowType::Int32 => i64::from(array.as_primitive::<Int32Type>().value(i)) as u64,
        ArrowType::Int64 => array.as_primitive::<Int64Type>().value(i) as u64,
        ArrowType::Float32 => f64::from(array.as_primitive::<Float32Type>().value(i)).to_bits(),
        ArrowType::Float64 => array.as_primitive::<Float64Type>().value(i).to_bits(),
        other => return Err(WitError::TypeMismatch(format!("cannot count distinct values of a {other} column"))),
    }))
}

impl kernels::Host for StageState {
    fn arith_columns(
        &mut self,
        op: Arith,
        left: Resource<ColumnHandle>,
        right: Resource<ColumnHandle>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let (l, r) = (self.f64_column(&left)?, self.f64_column(&right)?);
        let out =
            l.and_then(|l| r.and_then(|r| same_len(l.as_ref(), r.as_ref()).and_then(|_| arith(op, &l, r.as_ref()))));
        self.push_kernel_column(out)
    }

    fn arith_scalar(
        &mut self,
        op: Arith,
        left: Resource<ColumnHandle>,
        right: f64,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let out = self.f64_column(&left)?.and_then(|l| arith(op, &l, &Float64Array::new_scalar(right)));
        self.push_kernel_column(out)
    }

    fn compare_columns(
        &mut self,
        op: Compare,
        left: Resource<ColumnHandle>,
        right: Resource<ColumnHandle>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let (l, r) = (self.f64_column(&left)?, self.f64_column(&right)?);
        let out = l.and_then(|l| {
            r.and_then(|r| {
                same_len(l.as_ref(), r.as_ref()).and_then(|_| compare(op, &l, r.as_ref(), Some(nan_mask(&r))))
            })
        });
        self.push_kernel_column(out)
    }

    fn compare_scalar(
        &mut self,
        op: Compare,
        left: Resource<ColumnHandle>,
        right: f64,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let out = self.f64_column(&left)?.and_then(|l| {
            if right.is_nan() {
                // Every comparison with NaN is false (ne: true); nulls stay null.
                let values = vec![op == Compare::Ne; l.len()];
                return Ok(Arc::new(BooleanArray::new(values.into(), l.nulls().cloned())) as ArrayRef);
            }
            compare(op, &l, &Float64Array::new_scalar(right), None)
        });
        self.push_kernel_column(out)
    }

    fn and(
        &mut self,
        left: Resource<ColumnHandle>,
        right: Resource<ColumnHandle>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        self.mask_pair(&left, &right, boolean::and_kleene)
    }

    fn or(
        &mut self,
        left: Resource<ColumnHandle>,
        right: Resource<ColumnHandle>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        self.mask_pair(&left, &right, boolean::or_kleene)
    }

    fn not(&mut self, mask: Resource<ColumnHandle>) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let m = self.array(&mask)?;
        self.budget.reserve(elementwise_bytes(m.len()))?;
        let out = as_bool(&m).and_then(|m| boolean::not(m).map(|m| Arc::new(m) as ArrayRef).map_err(arrow_err));
        self.push_kernel_column(out)
    }

    fn is_null(&mut self, values: Resource<ColumnHandle>) -> Result<Resource<ColumnHandle>> {
        let a = self.array(&values)?;
        self.budget.reserve(elementwise_bytes(a.len()))?;
        let mask = boolean::is_null(&a).expect("is_null accepts every array");
        self.push_column(Arc::new(mask))
    }

    fn is_nan(&mut self, values: Resource<ColumnHandle>) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let out = self.f64_column(&values)?.map(|v| Arc::new(nan_mask(&v)) as ArrayRef);
        self.push_kernel_column(out)
    }

    fn summarize(&mut self, values: Resource<ColumnHandle>) -> Result<KernelResult<Moments>> {
        Ok(self.f64_column(&values)?.map(|v| moments(&v)))
    }

    fn dot(&mut self, left: Resource<ColumnHandle>, right: Resource<ColumnHandle>) -> Result<KernelResult<f64>> {
        let (l, r) = (self.f64_column(&left)?, self.f64_column(&right)?);
        Ok(l.and_then(|l| {
            r.and_then(|r| {
                same_len(l.as_ref(), r.as_ref())?;
                if l.null_count() == 0 && r.null_count() == 0 {
                    return Ok(simd::dot(l.values(), r.values()));
                }
                Ok((0..l.len()).filter(|&i| l.is_valid(i) && r.is_valid(i)).map(|i| l.value(i) * r.value(i)).sum())
            })
        }))
    }

    fn gram(
        &mut self,
        features: Vec<Resource<ColumnHandle>>,
        target: Resource<ColumnHandle>,
        intercept: bool,
    ) -> Result<KernelResult<Gram>> {
        let mut columns = Vec::with_capacity(features.len() + 1);
        for f in features.iter().chain([&target]) {
            match self.f64_column(f)? {
                Ok(c) => columns.push(c),
                Err(e) => return Ok(Err(e)),
            }
        }
        let y = columns.last().expect("target").clone();
        for c in &columns {
            if let Err(e) = same_len(c.as_ref(), y.as_ref()) {
                return Ok(Err(e));
            }
        }
        // Scratch: the partial matrices, and copies of the columns when
        // some rows are dropped. Columns may all be one array, so the work
        // (columns^2 x rows) is bounded by the deadline, not by memory.
        let n = y.len();
        let mut finite = true;
        let mut ticker = Ticker::new(&mut self.budget);
        for c in &columns {
            finite = finite && all_finite(std::slice::from_ref(c));
            ticker.tick(c.len())?;
        }
        let copies = if finite { 0 } else { columns.len().saturating_mul(n).saturating_mul(8) };
        self.budget.reserve(simd::gram_scratch_bytes(columns.len(), n).saturating_add(copies))?;
        let (rows, filtered, borrowed) = finite_rows(&columns, finite);
        let deadline = self.budget.deadline();
        let stop = || std::time::Instant::now() >= deadline;
        let done = if borrowed {
            let x: Vec<&[f64]> = columns[..features.len()].iter().map(|c| &c.values()[..]).collect();
            simd::gram_until(&x, y.values(), intercept, &stop)
        } else {
            let x: Vec<&[f64]> = filtered[..features.len()].iter().map(Vec::as_slice).collect();
            simd::gram_until(&x, &filtered[features.len()], intercept, &stop)
        };
        let Some((xtx, xty)) = done else {
            return Err(self.budget.overdue());
        };
        Ok(Ok(Gram { rows, xtx, xty }))
    }

    fn matvec(
        &mut self,
        columns: Vec<Resource<ColumnHandle>>,
        weights: Vec<f64>,
        bias: f64,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        if columns.len() != weights.len() {
            return Ok(Err(WitError::InvalidArgument(format!(
                "{} columns but {} weights",
                columns.len(),
                weights.len()
            ))));
        }
        let mut arrays = Vec::with_capacity(columns.len());
        for c in &columns {
            match self.f64_column(c)? {
                Ok(a) => arrays.push(a),
                Err(e) => return Ok(Err(e)),
            }
        }
        let n = arrays.first().map_or(0, |a| a.len());
        if let Some(a) = arrays.iter().find(|a| a.len() != n) {
            return Ok(Err(WitError::LengthMismatch(format!("{} rows against {n}", a.len()))));
        }
        let mut y = vec![bias; n];
        let mut ticker = Ticker::new(&mut self.budget);
        for (a, w) in arrays.iter().zip(&weights) {
            for (acc, x) in y.iter_mut().zip(a.values().iter()) {
                *acc += w * x;
            }
            ticker.tick(n)?;
        }
        let nulls = arrays.iter().fold(None::<NullBuffer>, |acc, a| NullBuffer::union(acc.as_ref(), a.nulls()));
        self.push_kernel_column(Ok(Arc::new(Float64Array::new(y.into(), nulls))))
    }
    fn solve_spd(&mut self, a: Vec<f64>, b: Vec<f64>) -> Result<KernelResult<std::result::Result<Vec<f64>, u32>>> {
        let n = b.len();
        if n.checked_mul(n) != Some(a.len()) {
            return Ok(Err(WitError::InvalidArgument(format!(
                "a has {} values; for {n} unknowns it must be {n} x {n}",
                a.len()
            ))));
        }
        // Factored in place: the lifted copy of `a`, and the solution, are
        // all the memory it takes; they count against the budget.
        self.budget.reserve(a.len().saturating_add(b.len()).saturating_mul(8))?;
        let mut a = a;
        let deadline = self.budget.deadline();
        let stop = || std::time::Instant::now() >= deadline;
        match simd::solve_spd(&mut a, &b, &stop) {
            Some(solved) => Ok(Ok(solved.map_err(|j| j as u32))),
            None => Err(self.budget.overdue()),
        }
    }

    fn logistic_newton(
        &mut self,
        features: Vec<Resource<ColumnHandle>>,
        target: Resource<ColumnHandle>,
        classes: Vec<f64>,
        weights: Vec<f64>,
    ) -> Result<KernelResult<NewtonTerms>> {
        let invalid = |reason: String| Ok(Err(WitError::InvalidArgument(reason)));
        if classes.len() < 2 {
            return invalid(format!("{} classes: logistic regression needs two or more", classes.len()));
        }
        let modeled = if classes.len() == 2 { 1 } else { classes.len() };
        let expected = modeled.checked_mul(features.len() + 1);
        if expected != Some(weights.len()) {
            return invalid(format!(
                "{} weights for {} features and {} classes: give {modeled} row(s) of features + 1",
                weights.len(),
                features.len(),
                classes.len()
            ));
        }
        let mut columns = Vec::with_capacity(features.len() + 1);
        for c in features.iter().chain([&target]) {
            match self.f64_column(c)? {
                Ok(a) => columns.push(a),
                Err(e) => return Ok(Err(e)),
            }
        }
        let y = columns.pop().expect("the target");
        for c in &columns {
            if let Err(e) = same_len(c.as_ref(), y.as_ref()) {
                return Ok(Err(e));
            }
        }
        // The Hessian and the block buffers, and the null masks (a bitmap
        // and a byte per row), checked before any of it is made; combining
        // the features' null masks is work over every column.
        let n = y.len();
        let masks = n.div_ceil(8).saturating_mul(2).saturating_add(n);
        self.budget.reserve(simd::logistic_scratch_bytes(columns.len(), modeled).saturating_add(masks))?;
        let mut nulls = y.nulls().cloned();
        let mut ticker = Ticker::new(&mut self.budget);
        for a in &columns {
            nulls = NullBuffer::union(nulls.as_ref(), a.nulls());
            ticker.tick(n)?;
        }
        let valid: Option<Vec<bool>> = nulls.map(|n| n.iter().collect());
        let x: Vec<&[f64]> = columns.iter().map(|c| &c.values()[..]).collect();
        let deadline = self.budget.deadline();
        let stop = || std::time::Instant::now() >= deadline;
        let Some(t) = simd::logistic_newton(&x, y.values(), valid.as_deref(), &classes, &weights, &stop) else {
            return Err(self.budget.overdue());
        };
        Ok(Ok(NewtonTerms { rows: t.rows, loss: t.loss, gradient: t.gradient, hessian: t.hessian }))
    }

    fn map_unary(&mut self, op: Unary, values: Resource<ColumnHandle>) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let out = self.f64_column(&values)?.map(|v| match op {
            Unary::Neg => map_f64(&v, |x| -x),
            Unary::Abs => map_f64(&v, f64::abs),
            Unary::Sqrt => map_f64(&v, f64::sqrt),
            Unary::Exp => map_f64(&v, f64::exp),
            Unary::Ln => map_f64(&v, f64::ln),
        });
        self.push_kernel_column(out)
    }

    fn pow(&mut self, values: Resource<ColumnHandle>, exponent: f64) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let out = self.f64_column(&values)?.map(|v| map_f64(&v, |x| x.powf(exponent)));
        self.push_kernel_column(out)
    }

    fn clamp(
        &mut self,
        values: Resource<ColumnHandle>,
        lo: f64,
        hi: f64,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let out = if lo > hi || lo.is_nan() || hi.is_nan() {
            Err(WitError::InvalidArgument(format!("clamp bounds [{lo}, {hi}] are not an interval")))
        } else {
            self.f64_column(&values)?.map(|v| map_f64(&v, |x| x.clamp(lo, hi)))
        };
        self.push_kernel_column(out)
    }

    fn standardize(
        &mut self,
        values: Resource<ColumnHandle>,
        center: f64,
        scale: f64,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let out = self.f64_column(&values)?.map(|v| map_f64(&v, |x| (x - center) / scale));
        self.push_kernel_column(out)
    }

    fn axpy(
        &mut self,
        a: f64,
        x: Resource<ColumnHandle>,
        y: Resource<ColumnHandle>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let (xs, ys) = (self.f64_column(&x)?, self.f64_column(&y)?);
        let out = xs.and_then(|xs| {
            ys.and_then(|ys| {
                same_len(xs.as_ref(), ys.as_ref())?;
                let values: Vec<f64> = xs.values().iter().zip(ys.values().iter()).map(|(x, y)| a * x + y).collect();
                let nulls = NullBuffer::union(xs.nulls(), ys.nulls());
                Ok(Arc::new(Float64Array::new(values.into(), nulls)) as ArrayRef)
            })
        });
        self.push_kernel_column(out)
    }

    fn cast(&mut self, values: Resource<ColumnHandle>, to: DataType) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let array = self.array(&values)?;
        // Text takes the most: a float as text is up to 24 bytes.
        let width = if matches!(to, DataType::Utf8) { 32 } else { 17 };
        self.budget.reserve(array.len().saturating_mul(width))?;
        let out = arrow_type(&to).and_then(|t| {
            if !arrow::compute::can_cast_types(array.data_type(), &t) {
                return Err(WitError::TypeMismatch(format!("cannot cast {} to {t}", array.data_type())));
            }
            let options = arrow::compute::CastOptions { safe: true, ..Default::default() };
            arrow::compute::cast_with_options(&array, &t, &options).map_err(arrow_err)
        });
        self.push_kernel_column(out)
    }

    fn fill_null(
        &mut self,
        values: Resource<ColumnHandle>,
        value: f64,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let out = self.f64_column(&values)?.map(|v| {
            let filled: Vec<f64> = v.iter().map(|x| x.unwrap_or(value)).collect();
            Arc::new(Float64Array::from(filled)) as ArrayRef
        });
        self.push_kernel_column(out)
    }

    fn if_then_else(
        &mut self,
        mask: Resource<ColumnHandle>,
        then: Resource<ColumnHandle>,
        otherwise: Resource<ColumnHandle>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let (m, t, o) = (self.array(&mask)?, self.array(&then)?, self.array(&otherwise)?);
        self.budget.reserve(slice_bytes(t.as_ref()).saturating_add(slice_bytes(o.as_ref())))?;
        let out = as_bool(&m).and_then(|m| {
            same_len(m, t.as_ref())?;
            same_len(m, o.as_ref())?;
            if t.data_type() != o.data_type() {
                let msg = format!("then is {} but otherwise is {}", t.data_type(), o.data_type());
                return Err(WitError::TypeMismatch(msg));
            }
            arrow::compute::kernels::zip::zip(m, &t, &o).map_err(arrow_err)
        });
        self.push_kernel_column(out)
    }

    fn filter(
        &mut self,
        values: Resource<ColumnHandle>,
        mask: Resource<ColumnHandle>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let (v, m) = (self.array(&values)?, self.array(&mask)?);
        self.budget.reserve(slice_bytes(v.as_ref()))?;
        let out = as_bool(&m).and_then(|m| {
            same_len(v.as_ref(), m)?;
            arrow::compute::filter(&v, m).map_err(arrow_err)
        });
        self.push_kernel_column(out)
    }

    fn take(
        &mut self,
        values: Resource<ColumnHandle>,
        indices: Resource<ColumnHandle>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let (v, i) = (self.array(&values)?, self.array(&indices)?);
        if i.data_type().is_integer() {
            self.budget.reserve(take_bytes(v.as_ref(), i.as_ref()))?;
        }
        let out = if !i.data_type().is_integer() {
            Err(WitError::TypeMismatch(format!("indices must be integers, found {}", i.data_type())))
        } else {
            let options = arrow::compute::TakeOptions { check_bounds: true };
            arrow::compute::take(&v, &i, Some(options)).map_err(arrow_err)
        };
        self.push_kernel_column(out)
    }

    fn concat(&mut self, columns: Vec<Resource<ColumnHandle>>) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let arrays = columns.iter().map(|c| self.array(c)).collect::<Result<Vec<_>>>()?;
        let bytes = arrays.iter().fold(0usize, |acc, a| acc.saturating_add(slice_bytes(a.as_ref())));
        self.budget.reserve(bytes)?;
        let out = match arrays.first() {
            None => Err(WitError::InvalidArgument("concat of no columns".into())),
            Some(first) if arrays.iter().any(|a| a.data_type() != first.data_type()) => {
                Err(WitError::TypeMismatch("concat of columns of different types".into()))
            }
            Some(_) => {
                let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
                arrow::compute::concat(&refs).map_err(arrow_err)
            }
        };
        self.push_kernel_column(out)
    }

    fn sort_to_indices(
        &mut self,
        columns: Vec<Resource<ColumnHandle>>,
        keys: Vec<SortKey>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let arrays = columns.iter().map(|c| self.array(c)).collect::<Result<Vec<_>>>()?;
        let rows = arrays.first().map_or(0, |a| a.len());
        // Indices, and the sort's own scratch of row indices.
        self.budget.reserve(rows.saturating_mul(16))?;
        let out = if arrays.len() != keys.len() || arrays.is_empty() {
            Err(WitError::InvalidArgument(format!("{} columns but {} sort keys", arrays.len(), keys.len())))
        } else if arrays.len() > MAX_SORT_KEYS {
            // Arrow's sort cannot be stopped midway; keys bound its work.
            Err(WitError::InvalidArgument(format!("{} sort keys; at most {MAX_SORT_KEYS} are allowed", arrays.len())))
        } else {
            let sort: Vec<arrow::compute::SortColumn> = arrays
                .iter()
                .zip(&keys)
                .map(|(a, k)| arrow::compute::SortColumn {
                    values: a.clone(),
                    options: Some(arrow::compute::SortOptions { descending: k.descending, nulls_first: k.nulls_first }),
                })
                .collect();
            arrow::compute::lexsort_to_indices(&sort, None).map(|i| Arc::new(i) as ArrayRef).map_err(arrow_err)
        };
        self.push_kernel_column(out)
    }

    fn histogram(
        &mut self,
        values: Resource<ColumnHandle>,
        bins: u32,
        lo: f64,
        hi: f64,
    ) -> Result<KernelResult<Vec<u64>>> {
        if bins == 0 || lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
            let msg = format!("histogram needs bins > 0 and lo < hi (got {bins} bins over [{lo}, {hi}])");
            return Ok(Err(WitError::InvalidArgument(msg)));
        }
        // The counts go back to the guest as a list: the stage's own memory
        // cap bounds them too, but the host builds them first.
        self.budget.reserve((bins as usize).saturating_mul(8))?;
        let v = match self.f64_column(&values)? {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let mut counts = Vec::new();
        if counts.try_reserve_exact(bins as usize).is_err() {
            return Err(self.budget.refuse((bins as usize).saturating_mul(8)));
        }
        counts.resize(bins as usize, 0u64);
        let width = (hi - lo) / bins as f64;
        let mut ticker = Ticker::new(&mut self.budget);
        for x in v.iter() {
            ticker.tick(1)?;
            if let Some(x) = x
                && x >= lo
                && x <= hi
            {
                let bin = (((x - lo) / width) as usize).min(bins as usize - 1);
                counts[bin] += 1;
            }
        }
        Ok(Ok(counts))
    }

    fn distinct_count(&mut self, values: Resource<ColumnHandle>) -> Result<KernelResult<u64>> {
        let array = self.array(&values)?;
        // A set entry per row at worst: a key and the table's overhead.
        self.budget.reserve(array.len().saturating_mul(32))?;
        let mut ticker = Ticker::new(&mut self.budget);
        let count = match array.as_any().downcast_ref::<arrow::array::StringArray>() {
            // Strings are compared in place: the set holds borrowed keys.
            Some(strings) => {
                let mut seen = std::collections::HashSet::new();
                for s in strings.iter().flatten() {
                    ticker.tick(1)?;
                    seen.insert(s);
                }
                seen.len()
            }
            None => {
                let mut seen = std::collections::HashSet::new();
                for i in 0..array.len() {
                    ticker.tick(1)?;
                    match value_bits(array.as_ref(), i) {
                        Ok(Some(bits)) => {
                            seen.insert(bits);
                        }
                        Ok(None) => {}
                        Err(e) => return Ok(Err(e)),
                    }
                }
                seen.len()
            }
        };
        Ok(Ok(count as u64))
    }

    fn hash_rows(
        &mut self,
        columns: Vec<Resource<ColumnHandle>>,
        seed: u64,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let arrays = columns.iter().map(|c| self.array(c)).collect::<Result<Vec<_>>>()?;
        let Some(first) = arrays.first() else {
            return Ok(Err(WitError::InvalidArgument("hash of no columns".into())));
        };
        if let Some(a) = arrays.iter().find(|a| a.len() != first.len()) {
            return Ok(Err(WitError::LengthMismatch(format!("{} rows against {}", a.len(), first.len()))));
        }
        // (Checked up front: a column of no rows is refused as one of many.)
        if let Some(a) = arrays.iter().find(|a| !hashable(a.data_type())) {
            return Ok(Err(WitError::TypeMismatch(format!("cannot hash a {} column", a.data_type()))));
        }
        self.budget.reserve(elementwise_bytes(first.len()))?;
        let mut hashes = Vec::with_capacity(first.len());
        let mut buf = Vec::new();
        let mut ticker = Ticker::new(&mut self.budget);
        for i in 0..first.len() {
            // Streamed value by value (the same hash as of the bytes
            // joined): a row of many long strings is never held whole.
            let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(seed);
            for a in &arrays {
                buf.clear();
                if let Err(e) = hash_bytes(a.as_ref(), i, &mut buf) {
                    return Ok(Err(e));
                }
                hasher.update(&buf);
                ticker.tick(1 + buf.len() / 64)?;
            }
            hashes.push(hasher.digest());
        }
        self.push_kernel_column(Ok(Arc::new(arrow::array::UInt64Array::from(hashes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f64s(values: &[Option<f64>]) -> Float64Array {
        Float64Array::from(values.to_vec())
    }

    #[test]
    fn moments_skip_nulls_and_nans_and_match_a_scalar_reference() {
        let m = moments(&f64s(&[Some(1.0), None, Some(f64::NAN), Some(3.0), Some(8.0)]));
        assert_eq!((m.count, m.nulls, m.nans), (3, 1, 1));
        assert_eq!((m.sum, m.mean, m.min, m.max), (12.0, 4.0, 1.0, 8.0));
        assert!((m.m2 - (9.0 + 1.0 + 16.0)).abs() < 1e-12);

        let clean: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin() * 1e3).collect();
        let m = moments(&Float64Array::from(clean.clone()));
        let mean = clean.iter().sum::<f64>() / 1000.0;
        let m2: f64 = clean.iter().map(|v| (v - mean) * (v - mean)).sum();
        assert_eq!(m.count, 1000);
        assert!((m.mean - mean).abs() < 1e-12 && (m.m2 - m2).abs() < 1e-9 * m2);
        assert_eq!(m.min, clean.iter().copied().fold(f64::INFINITY, f64::min));
        assert_eq!(m.max, clean.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    }

    #[test]
    fn moments_of_nothing_are_zero_with_nan_bounds() {
        for values in [f64s(&[]), f64s(&[None, None]), f64s(&[Some(f64::NAN)])] {
            let m = moments(&values);
            assert_eq!((m.count, m.sum, m.mean, m.m2), (0, 0.0, 0.0, 0.0));
            assert!(m.min.is_nan() && m.max.is_nan());
        }
        let inf = moments(&f64s(&[Some(f64::INFINITY), Some(1.0)]));
        assert_eq!(inf.max, f64::INFINITY, "infinities are values, not skipped");
    }

    #[test]
    fn comparisons_follow_ieee_for_nan_and_keep_nulls() {
        let x = f64s(&[Some(1.0), Some(f64::NAN), None, Some(5.0)]);
        let scalar = Float64Array::new_scalar(2.0);
        let lt = compare(Compare::Lt, &x, &scalar, None).unwrap();
        let lt = lt.as_any().downcast_ref::<BooleanArray>().unwrap();
        assert_eq!(lt.iter().collect::<Vec<_>>(), vec![Some(true), Some(false), None, Some(false)]);
        let ge = compare(Compare::Ge, &x, &scalar, None).unwrap();
        let ge = ge.as_any().downcast_ref::<BooleanArray>().unwrap();
        assert_eq!(ge.iter().collect::<Vec<_>>(), vec![Some(false), Some(false), None, Some(true)]);
        let ne = compare(Compare::Ne, &x, &scalar, None).unwrap();
        let ne = ne.as_any().downcast_ref::<BooleanArray>().unwrap();
        assert_eq!(ne.iter().collect::<Vec<_>>(), vec![Some(true), Some(true), None, Some(true)]);
    }

    #[test]
    fn arithmetic_propagates_nulls_and_follows_ieee() {
        let x = f64s(&[Some(1.0), None, Some(0.0), Some(-2.0)]);
        let y = f64s(&[Some(0.0), Some(1.0), Some(0.0), Some(4.0)]);
        let q = arith(Arith::Div, &x, &y).unwrap();
        let q = q.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(q.value(0), f64::INFINITY);
        assert!(q.is_null(1));
        assert!(q.value(2).is_nan());
        assert_eq!(q.value(3), -0.5);
    }

    #[test]
    fn non_numeric_input_is_a_type_mismatch() {
        let s: ArrayRef = Arc::new(arrow::array::StringArray::from(vec!["a"]));
        assert!(matches!(as_f64(&s), Err(WitError::TypeMismatch(_))));
        assert!(matches!(as_bool(&s), Err(WitError::TypeMismatch(_))));
    }

    #[test]
    fn gram_rows_drop_nulls_and_non_finite_values() {
        let a = Arc::new(f64s(&[Some(1.0), None, Some(3.0), Some(f64::INFINITY), Some(5.0)]));
        let y = Arc::new(f64s(&[Some(1.0), Some(2.0), Some(f64::NAN), Some(4.0), Some(5.0)]));
        let columns = [a, y];
        let (rows, filtered, borrowed) = finite_rows(&columns, all_finite(&columns));
        assert_eq!((rows, borrowed), (2, false));
        assert_eq!(filtered, vec![vec![1.0, 5.0], vec![1.0, 5.0]]);
    }
}

/// The kernels through the `Host` trait, as a guest calls them: handles in,
/// handles out, against straightforward scalar references.
#[cfg(test)]
mod host_tests {
    use arrow::array::{Int64Array, StringArray, UInt32Array, UInt64Array};
    use kernels::Host;

    use super::*;
    use crate::host::MemoryCap;

    fn state() -> StageState {
        let limits = MemoryCap { cap: 1 << 20, refused: None };
        let mut budget = crate::budget::HostBudget::new(64 << 20);
        budget.start_call(std::time::Duration::from_secs(60));
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().build();
        StageState::new(limits, budget, wasi, "{}".into(), "test".into(), None)
    }

    fn put(s: &mut StageState, a: ArrayRef) -> Resource<ColumnHandle> {
        s.push_column(a).unwrap()
    }

    fn get(s: &StageState, h: KernelResult<Resource<ColumnHandle>>) -> ArrayRef {
        s.table.get(&h.expect("kernel succeeds")).unwrap().0.clone()
    }

    fn f64_of(a: &ArrayRef) -> Vec<Option<f64>> {
        a.as_any().downcast_ref::<Float64Array>().unwrap().iter().collect()
    }

    /// Random values with nulls, NaN and infinities mixed in.
    fn random(n: usize, seed: u64) -> Vec<Option<f64>> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                match i % 17 {
                    3 => None,
                    5 => Some(f64::NAN),
                    7 => Some(f64::INFINITY),
                    _ => Some((x >> 11) as f64 / (1u64 << 53) as f64 * 20.0 - 10.0),
                }
            })
            .collect()
    }

    fn same(a: &[Option<f64>], b: &[Option<f64>]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (None, None) => true,
                (Some(x), Some(y)) => x == y || (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                _ => false,
            })
    }

    #[test]
    fn elementwise_kernels_match_scalar_references() {
        let mut s = state();
        let (xv, yv) = (random(1000, 1), random(1000, 2));
        let x = put(&mut s, Arc::new(Float64Array::from(xv.clone())));
        let y = put(&mut s, Arc::new(Float64Array::from(yv.clone())));
        let both = |f: fn(f64, f64) -> f64| -> Vec<Option<f64>> {
            xv.iter().zip(&yv).map(|(a, b)| Some(f((*a)?, (*b)?))).collect()
        };
        for (op, f) in [
            (Arith::Add, (|a, b| a + b) as fn(f64, f64) -> f64),
            (Arith::Sub, |a, b| a - b),
            (Arith::Mul, |a, b| a * b),
            (Arith::Div, |a, b| a / b),
        ] {
            let r = s.arith_columns(op, Resource::new_borrow(x.rep()), Resource::new_borrow(y.rep())).unwrap();
            assert!(same(&f64_of(&get(&s, r)), &both(f)), "{op:?}");
        }
        let one = |f: fn(f64) -> f64| -> Vec<Option<f64>> { xv.iter().map(|a| a.map(f)).collect() };
        for (op, f) in [
            (Unary::Neg, (|a: f64| -a) as fn(f64) -> f64),
            (Unary::Abs, f64::abs),
            (Unary::Sqrt, f64::sqrt),
            (Unary::Exp, f64::exp),
            (Unary::Ln, f64::ln),
        ] {
            let r = s.map_unary(op, Resource::new_borrow(x.rep())).unwrap();
            assert!(same(&f64_of(&get(&s, r)), &one(f)), "{op:?}");
        }
        let r = s.pow(Resource::new_borrow(x.rep()), 2.0).unwrap();
        assert!(same(&f64_of(&get(&s, r)), &one(|a| a.powf(2.0))));
        let r = s.clamp(Resource::new_borrow(x.rep()), -1.0, 1.0).unwrap();
        assert!(same(&f64_of(&get(&s, r)), &one(|a| a.clamp(-1.0, 1.0))));
        let r = s.standardize(Resource::new_borrow(x.rep()), 2.0, 4.0).unwrap();
        assert!(same(&f64_of(&get(&s, r)), &one(|a| (a - 2.0) / 4.0)));
        let r = s.axpy(3.0, Resource::new_borrow(x.rep()), Resource::new_borrow(y.rep())).unwrap();
        assert!(same(&f64_of(&get(&s, r)), &both(|a, b| 3.0 * a + b)));
        let r = s.fill_null(Resource::new_borrow(x.rep()), -7.0).unwrap();
        let filled = f64_of(&get(&s, r));
        assert!(same(&filled, &xv.iter().map(|a| Some(a.unwrap_or(-7.0))).collect::<Vec<_>>()));
        assert!(matches!(
            s.clamp(Resource::new_borrow(x.rep()), 1.0, -1.0).unwrap(),
            Err(WitError::InvalidArgument(_))
        ));
    }

    #[test]
    fn reductions_match_scalar_references() {
        let mut s = state();
        let (xv, yv) = (random(5000, 3), random(5000, 4));
        let x = put(&mut s, Arc::new(Float64Array::from(xv.clone())));
        let y = put(&mut s, Arc::new(Float64Array::from(yv.clone())));
        let finite: Vec<f64> = xv.iter().flatten().copied().filter(|v| !v.is_nan()).collect();
        let m = s.summarize(Resource::new_borrow(x.rep())).unwrap().unwrap();
        assert_eq!(m.count as usize, finite.len());
        assert_eq!(m.sum, finite.iter().sum::<f64>(), "an infinity makes both infinite");
        let dot = s.dot(Resource::new_borrow(x.rep()), Resource::new_borrow(y.rep())).unwrap().unwrap();
        let want: f64 = xv.iter().zip(&yv).filter_map(|(a, b)| Some((*a)? * (*b)?)).sum();
        assert!(dot.is_nan() == want.is_nan(), "{dot} vs {want}");

        let g = s.gram(vec![Resource::new_borrow(x.rep())], Resource::new_borrow(y.rep()), true).unwrap().unwrap();
        let rows: Vec<(f64, f64)> = xv
            .iter()
            .zip(&yv)
            .filter_map(|(a, b)| Some(((*a)?, (*b)?)))
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .collect();
        assert_eq!(g.rows as usize, rows.len());
        let sxx: f64 = rows.iter().map(|(a, _)| a * a).sum();
        let sxy: f64 = rows.iter().map(|(a, b)| a * b).sum();
        assert_eq!(g.xtx[0], rows.len() as f64);
        assert!((g.xtx[3] - sxx).abs() < 1e-9 * sxx && (g.xty[1] - sxy).abs() < 1e-9 * sxy.abs().max(1.0));

        let h = s.histogram(Resource::new_borrow(x.rep()), 4, -10.0, 10.0).unwrap().unwrap();
        let in_range = xv.iter().flatten().filter(|v| (-10.0..=10.0).contains(*v)).count();
        assert_eq!(h.iter().sum::<u64>() as usize, in_range);
        assert!(matches!(
            s.histogram(Resource::new_borrow(x.rep()), 0, 0.0, 1.0).unwrap(),
            Err(WitError::InvalidArgument(_))
        ));
    }

    #[test]
    fn logistic_newton_skips_null_and_non_finite_rows_and_checks_its_arguments() {
        let mut s = state();
        let xv = random(3000, 5);
        // An int target with nulls: classes 0, 1 and 2.
        let yv: Vec<Option<i64>> = (0..3000).map(|i| if i % 17 == 0 { None } else { Some(i % 3) }).collect();
        let x = put(&mut s, Arc::new(Float64Array::from(xv.clone())));
        let y = put(&mut s, Arc::new(Int64Array::from(yv.clone())));
        let b = |h: &Resource<ColumnHandle>| Resource::new_borrow(h.rep());
        let weights = vec![0.2, -0.1, 0.0, 0.3, -0.2, 0.05];
        let t = s.logistic_newton(vec![b(&x)], b(&y), vec![0.0, 1.0, 2.0], weights.clone()).unwrap().unwrap();
        // The same rows, filtered here, through the fused pass directly.
        let rows: Vec<(f64, f64)> = xv
            .iter()
            .zip(&yv)
            .filter_map(|(a, c)| Some(((*a)?, (*c)? as f64)))
            .filter(|(a, _)| a.is_finite())
            .collect();
        let (xs, ys): (Vec<f64>, Vec<f64>) = rows.iter().copied().unzip();
        let want = simd::logistic_newton(&[&xs], &ys, None, &[0.0, 1.0, 2.0], &weights, &|| false).unwrap();
        assert_eq!(t.rows as usize, rows.len());
        // Equal to rounding: the blocks of rows differ.
        let got = [vec![t.loss], t.gradient.clone(), t.hessian.clone()].concat();
        let expected = [vec![want.loss], want.gradient, want.hessian].concat();
        for (g, w) in got.iter().zip(&expected) {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "{g} vs {w}");
        }
        assert_eq!(t.hessian.len(), 6 * 7 / 2);

        let invalid = |r: KernelResult<NewtonTerms>| matches!(r, Err(WitError::InvalidArgument(_)));
        assert!(invalid(s.logistic_newton(vec![b(&x)], b(&y), vec![1.0], vec![0.0, 0.0]).unwrap()));
        assert!(invalid(s.logistic_newton(vec![b(&x)], b(&y), vec![0.0, 1.0], vec![0.0; 3]).unwrap()));
        let short = put(&mut s, Arc::new(Float64Array::from(vec![1.0, 2.0])));
        assert!(matches!(
            s.logistic_newton(vec![b(&short)], b(&y), vec![0.0, 1.0], vec![0.0; 2]).unwrap(),
            Err(WitError::LengthMismatch(_))
        ));
        // A Hessian past the stage's host memory budget (64 MiB here) is
        // refused before anything is allocated.
        let classes: Vec<f64> = (0..4000).map(f64::from).collect();
        assert!(s.logistic_newton(vec![b(&x)], b(&y), classes, vec![0.0; 8000]).is_err());
    }

    #[test]
    fn solve_spd_solves_names_the_singular_column_and_checks_the_shape() {
        let mut s = state();
        let x = s.solve_spd(vec![4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0], vec![0.0, -5.0, 7.0]).unwrap().unwrap();
        let x = x.unwrap();
        for (got, want) in x.iter().zip([1.0, -2.0, 3.0]) {
            assert!((got - want).abs() < 1e-12, "{x:?}");
        }
        assert_eq!(s.solve_spd(vec![1.0, 1.0, 1.0, 1.0], vec![1.0, 1.0]).unwrap().unwrap(), Err(1));
        assert!(matches!(s.solve_spd(vec![1.0; 3], vec![1.0, 1.0]).unwrap(), Err(WitError::InvalidArgument(_))));
    }

    #[test]
    fn empty_columns_and_length_mismatches() {
        let mut s = state();
        let empty = put(&mut s, Arc::new(Float64Array::from(Vec::<f64>::new())));
        let three = put(&mut s, Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])));
        let m = s.summarize(Resource::new_borrow(empty.rep())).unwrap().unwrap();
        assert_eq!(m.count, 0);
        assert_eq!(s.dot(Resource::new_borrow(empty.rep()), Resource::new_borrow(empty.rep())).unwrap().unwrap(), 0.0);
        for r in [
            s.arith_columns(Arith::Add, Resource::new_borrow(empty.rep()), Resource::new_borrow(three.rep()))
                .unwrap()
                .err(),
            s.axpy(1.0, Resource::new_borrow(empty.rep()), Resource::new_borrow(three.rep())).unwrap().err(),
        ] {
            assert!(matches!(r, Some(WitError::LengthMismatch(_))), "{r:?}");
        }
        assert!(matches!(
            s.dot(Resource::new_borrow(empty.rep()), Resource::new_borrow(three.rep())).unwrap(),
            Err(WitError::LengthMismatch(_))
        ));
        assert!(matches!(
            s.matvec(vec![Resource::new_borrow(three.rep())], vec![1.0, 2.0], 0.0).unwrap(),
            Err(WitError::InvalidArgument(_))
        ));
    }

    #[test]
    fn selection_kernels() {
        let mut s = state();
        let v = put(&mut s, Arc::new(Float64Array::from(vec![Some(3.0), None, Some(1.0), Some(2.0)])));
        let mask = put(&mut s, Arc::new(BooleanArray::from(vec![Some(true), Some(true), None, Some(false)])));
        let r = s.filter(Resource::new_borrow(v.rep()), Resource::new_borrow(mask.rep())).unwrap();
        assert_eq!(f64_of(&get(&s, r)), vec![Some(3.0), None]);

        let idx = put(&mut s, Arc::new(Int64Array::from(vec![3, 0])));
        let r = s.take(Resource::new_borrow(v.rep()), Resource::new_borrow(idx.rep())).unwrap();
        assert_eq!(f64_of(&get(&s, r)), vec![Some(2.0), Some(3.0)]);
        let bad = put(&mut s, Arc::new(Int64Array::from(vec![9])));
        assert!(s.take(Resource::new_borrow(v.rep()), Resource::new_borrow(bad.rep())).unwrap().is_err());

        let r = s.concat(vec![Resource::new_borrow(v.rep()), Resource::new_borrow(v.rep())]).unwrap();
        assert_eq!(get(&s, r).len(), 8);

        let key = SortKey { descending: true, nulls_first: true };
        let r = s.sort_to_indices(vec![Resource::new_borrow(v.rep())], vec![key]).unwrap();
        let order: Vec<u32> = get(&s, r).as_any().downcast_ref::<UInt32Array>().unwrap().values().to_vec();
        assert_eq!(order, vec![1, 0, 3, 2]);

        let other = put(&mut s, Arc::new(Float64Array::from(vec![9.0, 9.0, 9.0, 9.0])));
        let r = s
            .if_then_else(
                Resource::new_borrow(mask.rep()),
                Resource::new_borrow(v.rep()),
                Resource::new_borrow(other.rep()),
            )
            .unwrap();
        assert_eq!(f64_of(&get(&s, r)), vec![Some(3.0), None, Some(9.0), Some(9.0)]);
    }

    #[test]
    fn casts_hashes_and_distinct_counts() {
        let mut s = state();
        let big = put(&mut s, Arc::new(Float64Array::from(vec![1.5, 3e10, -2.0])));
        let r = s.cast(Resource::new_borrow(big.rep()), DataType::Int32).unwrap();
        let ints = get(&s, r);
        let ints = ints.as_any().downcast_ref::<arrow::array::Int32Array>().unwrap();
        assert_eq!(ints.iter().collect::<Vec<_>>(), vec![Some(1), None, Some(-2)], "out of range becomes null");

        let names = put(&mut s, Arc::new(StringArray::from(vec![Some("a"), Some("b"), Some("a"), None])));
        let nums = put(&mut s, Arc::new(Int64Array::from(vec![Some(1), Some(1), Some(1), None])));
        let r = s.hash_rows(vec![Resource::new_borrow(names.rep()), Resource::new_borrow(nums.rep())], 42).unwrap();
        let h = get(&s, r);
        let h = h.as_any().downcast_ref::<UInt64Array>().unwrap().values().to_vec();
        assert_eq!(h[0], h[2], "equal rows hash equal");
        assert_ne!(h[0], h[1]);
        let mut expected = vec![1u8];
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.push(b'a');
        expected.push(1);
        expected.extend_from_slice(&1i64.to_le_bytes());
        assert_eq!(h[0], xxhash_rust::xxh3::xxh3_64_with_seed(&expected, 42), "stable across runs and machines");

        assert_eq!(s.distinct_count(Resource::new_borrow(names.rep())).unwrap().unwrap(), 2);
        assert_eq!(s.distinct_count(Resource::new_borrow(nums.rep())).unwrap().unwrap(), 1);
    }
}

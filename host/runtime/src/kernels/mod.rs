//! Host side of the `kernels` import: arithmetic, comparisons, masks,
//! statistics and the linear algebra of model training, on columns that
//! stay in the host. Elementwise work uses arrow's compute kernels; the
//! reductions arrow lacks (dot, Gram matrix, fused moments) live in
//! [`simd`].

pub mod simd;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array};
use arrow::buffer::NullBuffer;
use arrow::compute::kernels::{boolean, cmp, numeric};
use arrow::datatypes::DataType as ArrowType;
use wasmtime::Result;
use wasmtime::component::Resource;

use crate::bindings::WitError;
use crate::bindings::wasmpipe::stage::kernels::{self, Arith, Compare, NormalEquations as Gram, Summary as Moments};
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
    let mut nans = 0u64;
    let (mut count, mut sum, mut min, mut max) = (0u64, 0.0f64, f64::INFINITY, f64::NEG_INFINITY);
    let counted = |i: usize| values.is_valid(i) && !values.value(i).is_nan();
    let raw = values.values();
    if nulls == 0 && !raw.iter().any(|v| v.is_nan()) {
        count = raw.len() as u64;
        sum = simd::sum(raw);
        for &v in raw.iter() {
            min = min.min(v);
            max = max.max(v);
        }
    } else {
        for (i, &v) in raw.iter().enumerate() {
            if values.is_valid(i) && v.is_nan() {
                nans += 1;
            }
            if counted(i) {
                count += 1;
                sum += v;
                min = min.min(v);
                max = max.max(v);
            }
        }
    }
    if count == 0 {
        return Moments { count, nulls, nans, sum: 0.0, mean: 0.0, m2: 0.0, min: f64::NAN, max: f64::NAN };
    }
    // Two passes (sum, then squared deviations): as stable as Welford and
    // vectorizable.
    let mean = sum / count as f64;
    let m2 = if count == raw.len() as u64 {
        raw.iter().map(|v| (v - mean) * (v - mean)).sum()
    } else {
        raw.iter().enumerate().filter(|(i, _)| counted(*i)).map(|(_, v)| (v - mean) * (v - mean)).sum()
    };
    Moments { count, nulls, nans, sum, mean, m2, min, max }
}

impl StageState {
    fn array(&self, handle: &Resource<ColumnHandle>) -> Result<ArrayRef> {
        Ok(self.table.get(handle)?.0.clone())
    }

    fn f64_column(&self, handle: &Resource<ColumnHandle>) -> Result<KernelResult<Arc<Float64Array>>> {
        Ok(as_f64(&self.array(handle)?))
    }

    fn push_kernel_column(&mut self, r: KernelResult<ArrayRef>) -> Result<KernelResult<Resource<ColumnHandle>>> {
        Ok(match r {
            Ok(a) => Ok(self.table.push(ColumnHandle(a))?),
            Err(e) => Err(e),
        })
    }
}

/// Columns as f64 with their rows restricted to those where every column is
/// non-null and finite; borrowed when no row is dropped.
fn finite_rows(columns: &[Arc<Float64Array>]) -> (u64, Vec<Vec<f64>>, bool) {
    let n = columns.first().map_or(0, |c| c.len());
    let all_valid = columns.iter().all(|c| c.null_count() == 0 && c.values().iter().all(|v| v.is_finite()));
    if all_valid {
        return (n as u64, Vec::new(), true);
    }
    let keep: Vec<bool> = (0..n).map(|i| columns.iter().all(|c| c.is_valid(i) && c.value(i).is_finite())).collect();
    let filtered =
        columns.iter().map(|c| c.values().iter().zip(&keep).filter(|(_, k)| **k).map(|(v, _)| *v).collect()).collect();
    (keep.iter().filter(|k| **k).count() as u64, filtered, false)
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
        let (l, r) = (self.array(&left)?, self.array(&right)?);
        let out = as_bool(&l).and_then(|l| {
            as_bool(&r).and_then(|r| {
                same_len(l, r)?;
                boolean::and_kleene(l, r).map(|m| Arc::new(m) as ArrayRef).map_err(arrow_err)
            })
        });
        self.push_kernel_column(out)
    }

    fn or(
        &mut self,
        left: Resource<ColumnHandle>,
        right: Resource<ColumnHandle>,
    ) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let (l, r) = (self.array(&left)?, self.array(&right)?);
        let out = as_bool(&l).and_then(|l| {
            as_bool(&r).and_then(|r| {
                same_len(l, r)?;
                boolean::or_kleene(l, r).map(|m| Arc::new(m) as ArrayRef).map_err(arrow_err)
            })
        });
        self.push_kernel_column(out)
    }

    fn not(&mut self, mask: Resource<ColumnHandle>) -> Result<KernelResult<Resource<ColumnHandle>>> {
        let m = self.array(&mask)?;
        let out = as_bool(&m).and_then(|m| boolean::not(m).map(|m| Arc::new(m) as ArrayRef).map_err(arrow_err));
        self.push_kernel_column(out)
    }

    fn is_null(&mut self, values: Resource<ColumnHandle>) -> Result<Resource<ColumnHandle>> {
        let a = self.array(&values)?;
        let mask = boolean::is_null(&a).expect("is_null accepts every array");
        Ok(self.table.push(ColumnHandle(Arc::new(mask)))?)
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
        let (rows, filtered, borrowed) = finite_rows(&columns);
        let (xtx, xty) = if borrowed {
            let x: Vec<&[f64]> = columns[..features.len()].iter().map(|c| &c.values()[..]).collect();
            simd::gram(&x, y.values(), intercept)
        } else {
            let x: Vec<&[f64]> = filtered[..features.len()].iter().map(Vec::as_slice).collect();
            simd::gram(&x, &filtered[features.len()], intercept)
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
        let out = (|| {
            let n = arrays.first().map_or(0, |a| a.len());
            for a in &arrays {
                same_len(a.as_ref(), arrays[0].as_ref())?;
            }
            let mut y = vec![bias; n];
            for (a, w) in arrays.iter().zip(&weights) {
                for (acc, x) in y.iter_mut().zip(a.values().iter()) {
                    *acc += w * x;
                }
            }
            let nulls = arrays.iter().fold(None::<NullBuffer>, |acc, a| NullBuffer::union(acc.as_ref(), a.nulls()));
            Ok(Arc::new(Float64Array::new(y.into(), nulls)) as ArrayRef)
        })();
        self.push_kernel_column(out)
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
        let (rows, filtered, borrowed) = finite_rows(&[a, y]);
        assert_eq!((rows, borrowed), (2, false));
        assert_eq!(filtered, vec![vec![1.0, 5.0], vec![1.0, 5.0]]);
    }
}

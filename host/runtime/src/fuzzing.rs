//! A fuzz target for the kernels: arbitrary bytes become a sequence of
//! kernel calls with arbitrary arguments, on arbitrary handles, as a hostile
//! stage would make them. Every call must return (a result, a WIT error, or
//! a limit error); none may panic, abort or allocate past the budget.
//!
//! Used by `fuzz/` (libFuzzer, `make fuzz`) and replayed over the saved
//! corpus by `make test`.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use wasmtime::component::Resource;

use crate::bindings::wasmpipe::stage::kernels::{Arith, Compare, Host as Kernels, SortKey, Unary};
use crate::bindings::wasmpipe::stage::types::{HostBatch, HostColumn};
use crate::bindings::{DataType, TimeUnit};
use crate::budget::HostBudget;
use crate::host::{ColumnHandle, MemoryCap, StageState};

/// Host memory budget of the fuzzed instance.
pub const BUDGET: usize = 64 << 20;

/// Reads arguments from the fuzzer's bytes; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    fn f64(&mut self) -> f64 {
        match self.u8() % 8 {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => -0.0,
            3 => f64::MAX,
            _ => f64::from_bits(self.u64()),
        }
    }
}

/// Run the kernel calls `data` describes.
pub fn kernels(data: &[u8]) {
    let limits = MemoryCap { cap: 1 << 20, refused: None };
    let mut budget = HostBudget::new(BUDGET);
    budget.start_call(Duration::from_secs(5));
    let wasi = wasmtime_wasi::WasiCtxBuilder::new().build();
    let mut s = StageState::new(limits, budget, wasi, "{}".into(), "fuzz".into(), None);
    let mut b = Bytes(data);

    let seeds: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(vec![Some(1.5), None, Some(f64::NAN), Some(-3.0), Some(f64::INFINITY)])),
        Arc::new(Int64Array::from(vec![Some(4), Some(0), None, Some(-1), Some(i64::MAX)])),
        Arc::new(StringArray::from(vec![Some("a"), None, Some(""), Some("a"), Some("zz")])),
        Arc::new(BooleanArray::from(vec![Some(true), None, Some(false), Some(true), Some(false)])),
        Arc::new(Float64Array::from(Vec::<f64>::new())),
    ];
    let mut handles: Vec<u32> = Vec::new();
    for a in seeds {
        match s.push_column(a) {
            Ok(h) => handles.push(h.rep()),
            Err(_) => return,
        }
    }
    let pick = |b: &mut Bytes, handles: &[u32]| -> Resource<ColumnHandle> {
        let i = b.u8() as usize % handles.len();
        Resource::new_borrow(handles[i])
    };
    let arith = |b: &mut Bytes| [Arith::Add, Arith::Sub, Arith::Mul, Arith::Div][b.u8() as usize % 4];
    let compare = |b: &mut Bytes| {
        [Compare::Eq, Compare::Ne, Compare::Lt, Compare::Le, Compare::Gt, Compare::Ge][b.u8() as usize % 6]
    };
    let data_type = |b: &mut Bytes| match b.u8() % 8 {
        0 => DataType::Boolean,
        1 => DataType::Int32,
        2 => DataType::Int64,
        3 => DataType::Float32,
        4 => DataType::Float64,
        5 => DataType::Utf8,
        6 => DataType::Timestamp(TimeUnit::Millisecond),
        _ => DataType::Other("list".into()),
    };

    for _ in 0..64 {
        if b.0.is_empty() {
            break;
        }
        let op = b.u8() % 26;
        let many = |b: &mut Bytes, handles: &[u32]| -> Vec<Resource<ColumnHandle>> {
            (0..b.u8() % 8).map(|_| pick(b, handles)).collect()
        };
        // Each call's outcome: a new column (kept, as a stage would keep
        // it), something else, or an error: all fine. A limit error ends
        // the instance, as it would a stage.
        let column = match op {
            0 => s.arith_columns(arith(&mut b), pick(&mut b, &handles), pick(&mut b, &handles)).map(Result::ok),
            1 => s.arith_scalar(arith(&mut b), pick(&mut b, &handles), b.f64()).map(Result::ok),
            2 => s.compare_columns(compare(&mut b), pick(&mut b, &handles), pick(&mut b, &handles)).map(Result::ok),
            3 => s.compare_scalar(compare(&mut b), pick(&mut b, &handles), b.f64()).map(Result::ok),
            4 => s.and(pick(&mut b, &handles), pick(&mut b, &handles)).map(Result::ok),
            5 => s.not(pick(&mut b, &handles)).map(Result::ok),
            6 => s.is_nan(pick(&mut b, &handles)).map(Result::ok),
            7 => s.summarize(pick(&mut b, &handles)).map(|_| None),
            8 => s.dot(pick(&mut b, &handles), pick(&mut b, &handles)).map(|_| None),
            9 => {
                let features = many(&mut b, &handles);
                s.gram(features, pick(&mut b, &handles), b.u8() % 2 == 0).map(|_| None)
            }
            10 => {
                let columns = many(&mut b, &handles);
                let weights = (0..b.u8() % 8).map(|_| b.f64()).collect();
                s.matvec(columns, weights, b.f64()).map(Result::ok)
            }
            11 => {
                let op = [Unary::Neg, Unary::Abs, Unary::Sqrt, Unary::Exp, Unary::Ln][b.u8() as usize % 5];
                s.map_unary(op, pick(&mut b, &handles)).map(Result::ok)
            }
            12 => s.clamp(pick(&mut b, &handles), b.f64(), b.f64()).map(Result::ok),
            13 => s.cast(pick(&mut b, &handles), data_type(&mut b)).map(Result::ok),
            14 => s.fill_null(pick(&mut b, &handles), b.f64()).map(Result::ok),
            15 => {
                s.if_then_else(pick(&mut b, &handles), pick(&mut b, &handles), pick(&mut b, &handles)).map(Result::ok)
            }
            16 => Kernels::filter(&mut s, pick(&mut b, &handles), pick(&mut b, &handles)).map(Result::ok),
            17 => Kernels::take(&mut s, pick(&mut b, &handles), pick(&mut b, &handles)).map(Result::ok),
            18 => s.concat(many(&mut b, &handles)).map(Result::ok),
            19 => {
                let columns = many(&mut b, &handles);
                let keys =
                    (0..b.u8() % 8).map(|_| SortKey { descending: b.u8() % 2 == 0, nulls_first: b.u8() % 2 == 0 });
                s.sort_to_indices(columns, keys.collect()).map(Result::ok)
            }
            20 => s.histogram(pick(&mut b, &handles), b.u32(), b.f64(), b.f64()).map(|_| None),
            21 => s.distinct_count(pick(&mut b, &handles)).map(|_| None),
            22 => s.hash_rows(many(&mut b, &handles), b.u64()).map(Result::ok),
            23 => HostColumn::slice(&mut s, pick(&mut b, &handles), b.u64(), b.u64()).map(Result::ok),
            24 => HostColumn::read_f64(&mut s, pick(&mut b, &handles)).map(|_| None),
            _ => {
                let columns =
                    many(&mut b, &handles).into_iter().enumerate().map(|(i, c)| (format!("c{}", i % 3), c)).collect();
                match s.from_columns(columns) {
                    Ok(Ok(batch)) => HostBatch::drop(&mut s, batch).map(|_| None),
                    Ok(Err(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        };
        match column {
            Ok(Some(h)) => handles.push(h.rep()),
            Ok(None) => {}
            Err(_) => break,
        }
        assert!(s.budget.used() <= BUDGET + (1 << 20), "host memory {} past the budget", s.budget.used());
    }
}

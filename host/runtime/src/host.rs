//! Host side of the `types` and `host` imports: Arrow arrays and record
//! batches held in the store's resource table, handed to the guest as
//! handles, plus logging and configuration.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    PrimitiveArray, StringArray,
};
use arrow::buffer::NullBuffer;
use arrow::compute::kernels::cast::cast;
use arrow::datatypes::{DataType as ArrowType, Field as ArrowField, Schema as ArrowSchema};
use arrow::datatypes::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::wasmpipe::stage::{host, types};
use crate::bindings::{DataType, Field, Level, TimeUnit, WitError};
use crate::budget::HostBudget;

/// A column handle's host data: an immutable Arrow array.
pub struct ColumnHandle(pub ArrayRef);

/// A batch handle's host data: an immutable Arrow record batch.
pub struct BatchHandle(pub RecordBatch);

/// Caps an instance's linear memory and remembers whether the cap was hit,
/// so that the failure that follows (an allocation error, usually a trap)
/// can be reported as what it is.
pub struct MemoryCap {
    /// Largest linear memory, in bytes.
    pub cap: usize,
    /// The size a refused growth asked for, once one was refused.
    pub refused: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        if desired > self.cap {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        // Tables hold function references; a million entries is far beyond
        // any real stage and bounds host memory per instance.
        Ok(desired <= 1 << 20)
    }
}

/// One line of a task's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// The text the stage logged (or wrote to stdout/stderr).
    pub message: String,
}

/// Receives log lines as a task runs (e.g. to print them live).
pub type LogSink = Arc<dyn Fn(&str, &LogRecord) + Send + Sync>;

/// Which guest call an instance is in: what `quarantine` and `report` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Phase {
    /// `open`, `transform` or `close`: rows may be quarantined.
    Transform,
    /// `finalize`: a report may be published.
    Finalize,
    /// Anything else.
    #[default]
    Other,
}

/// Rows a stage set aside through `host.quarantine`, one reason per row.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// The rows, as the stage saw them.
    pub rows: RecordBatch,
    /// Why, one utf8 value per row.
    pub reasons: ArrayRef,
}

/// A report a stage published from `finalize` through `host.report`.
#[derive(Debug, Clone)]
pub struct Report {
    /// The JSON document (checked to parse).
    pub json: String,
    /// The same facts as rows.
    pub table: Option<RecordBatch>,
}

/// Everything a store holds for one stage instance.
pub struct StageState {
    pub(crate) table: ResourceTable,
    pub(crate) limits: MemoryCap,
    pub(crate) wasi: WasiCtx,
    pub(crate) config_json: Arc<str>,
    pub(crate) label: String,
    pub(crate) log: std::collections::VecDeque<LogRecord>,
    pub(crate) sink: Option<LogSink>,
    pub(crate) phase: Phase,
    pub(crate) quarantined: Vec<Quarantined>,
    pub(crate) report: Option<Report>,
    /// Host memory and time the stage may use (see [`crate::budget`]).
    pub(crate) budget: HostBudget,
    /// Bytes of log text kept in `log`.
    log_bytes: usize,
    /// The stage's monotonic clock, in nanoseconds: it advances only by
    /// the waits the stage asks for (see [`crate::clock`]).
    pub(crate) clock_ns: u64,
}

/// Longest log line kept or passed on, in bytes; longer ones are cut, with
/// a note of how much was cut. Generous for a message, small beside a
/// terminal or a log collector.
pub const LOG_LINE_BYTES: usize = 16 << 10;

/// Log text an instance keeps for its error report, in bytes. The sink has
/// seen every line already; this is only what a failure quotes from.
pub const LOG_KEEP_BYTES: usize = 1 << 20;

/// What one live handle costs the host besides its arrays: the table slot,
/// the `Arc`s, a batch's schema. Charged per handle (and per column of a
/// batch) so that a flood of handles to one small array is bounded too.
const HANDLE_BYTES: usize = 128;
const FIELD_BYTES: usize = 96;

impl StageState {
    /// The state of a fresh instance.
    pub(crate) fn new(
        limits: MemoryCap,
        budget: HostBudget,
        wasi: WasiCtx,
        config_json: Arc<str>,
        label: String,
        sink: Option<LogSink>,
    ) -> Self {
        StageState {
            table: ResourceTable::new(),
            limits,
            wasi,
            config_json,
            label,
            log: std::collections::VecDeque::new(),
            sink,
            phase: Phase::Other,
            quarantined: Vec::new(),
            report: None,
            budget,
            log_bytes: 0,
            clock_ns: 0,
        }
    }

    fn push_log(&mut self, mut record: LogRecord) {
        if record.message.len() > LOG_LINE_BYTES {
            record.message = cut(&record.message, LOG_LINE_BYTES);
        }
        if let Some(sink) = &self.sink {
            sink(&self.label, &record);
        }
        // Keep a bounded tail for error reports: a chatty stage cannot grow
        // host memory; the sink has already seen every line. A record
        // costs its text and its bookkeeping, so empty lines count too.
        let cost = |r: &LogRecord| r.message.len() + std::mem::size_of::<LogRecord>();
        if self.log_bytes + cost(&record) <= LOG_KEEP_BYTES {
            self.log_bytes += cost(&record);
            self.log.push_back(record);
        } else if record.level == Level::Error {
            // An error line is what a failure quotes: make room for it.
            while self.log_bytes + cost(&record) > LOG_KEEP_BYTES
                && let Some(old) = self.log.pop_front()
            {
                self.log_bytes -= cost(&old);
            }
            self.log_bytes += cost(&record);
            self.log.push_back(record);
        }
    }

    /// Put the batch the host hands the stage into the table: its memory is
    /// the host's allowance for this call.
    pub(crate) fn push_batch(&mut self, batch: RecordBatch) -> Result<Resource<BatchHandle>> {
        self.budget.claim_input(&batch)?;
        self.insert_batch(batch)
    }

    /// Take a batch the guest returned out of the table.
    pub(crate) fn take_batch(&mut self, handle: Resource<BatchHandle>) -> Result<RecordBatch> {
        let batch = self.table.delete(handle)?.0;
        self.budget.release(batch_cost(&batch));
        Ok(batch)
    }

    /// Put an array the stage asked for into the table, charged to its
    /// budget.
    pub(crate) fn push_column(&mut self, array: ArrayRef) -> Result<Resource<ColumnHandle>> {
        self.budget.claim(array.as_ref())?;
        self.budget.hold(HANDLE_BYTES)?;
        Ok(self.table.push(ColumnHandle(array))?)
    }

    /// Put a batch the stage asked for into the table, charged to its
    /// budget.
    pub(crate) fn push_new_batch(&mut self, batch: RecordBatch) -> Result<Resource<BatchHandle>> {
        for c in batch.columns() {
            self.budget.claim(c.as_ref())?;
        }
        self.insert_batch(batch)
    }

    fn insert_batch(&mut self, batch: RecordBatch) -> Result<Resource<BatchHandle>> {
        self.budget.hold(batch_cost(&batch))?;
        Ok(self.table.push(BatchHandle(batch))?)
    }

    fn delete_column(&mut self, handle: Resource<ColumnHandle>) -> Result<()> {
        self.table.delete(handle)?;
        self.budget.release(HANDLE_BYTES);
        Ok(())
    }
}

/// The bookkeeping a batch handle costs besides its arrays: its fields,
/// names included (every batch a call makes holds its own copy of them).
fn batch_cost(batch: &RecordBatch) -> usize {
    let names: usize = batch.schema().fields().iter().map(|f| f.name().len()).sum();
    HANDLE_BYTES + FIELD_BYTES * batch.num_columns() + names
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Map an Arrow type to the WIT data type.
pub fn data_type(t: &ArrowType) -> DataType {
    use arrow::datatypes::TimeUnit as U;
    match t {
        ArrowType::Boolean => DataType::Boolean,
        ArrowType::Int32 => DataType::Int32,
        ArrowType::Int64 => DataType::Int64,
        ArrowType::Float32 => DataType::Float32,
        ArrowType::Float64 => DataType::Float64,
        ArrowType::Utf8 => DataType::Utf8,
        ArrowType::Timestamp(u, _) => DataType::Timestamp(match u {
            U::Second => TimeUnit::Second,
            U::Millisecond => TimeUnit::Millisecond,
            U::Microsecond => TimeUnit::Microsecond,
            U::Nanosecond => TimeUnit::Nanosecond,
        }),
        other => DataType::Other(other.to_string()),
    }
}

/// Map a WIT data type to the Arrow type [`data_type`] maps to it (none for
/// `other`, which names a type it cannot build).
pub fn arrow_type(t: &DataType) -> Option<ArrowType> {
    use arrow::datatypes::TimeUnit as U;
    Some(match t {
        DataType::Boolean => ArrowType::Boolean,
        DataType::Int32 => ArrowType::Int32,
        DataType::Int64 => ArrowType::Int64,
        DataType::Float32 => ArrowType::Float32,
        DataType::Float64 => ArrowType::Float64,
        DataType::Utf8 => ArrowType::Utf8,
        DataType::Timestamp(u) => ArrowType::Timestamp(
            match u {
                TimeUnit::Second => U::Second,
                TimeUnit::Millisecond => U::Millisecond,
                TimeUnit::Microsecond => U::Microsecond,
                TimeUnit::Nanosecond => U::Nanosecond,
            },
            None,
        ),
        DataType::Other(_) => return None,
    })
}

fn type_mismatch(expected: &str, actual: &ArrowType) -> WitError {
    WitError::TypeMismatch(format!("expected {expected}, found {actual}"))
}

fn validity(values_len: usize, validity: Option<Vec<bool>>) -> Result<Option<NullBuffer>, WitError> {
    match validity {
        None => Ok(None),
        Some(v) if v.len() != values_len => {
            Err(WitError::LengthMismatch(format!("{values_len} values but {} validity flags", v.len())))
        }
        Some(v) => Ok(Some(NullBuffer::from(v))),
    }
}

/// Host memory a copy of `array` into guest values takes on its way (the
/// host builds the list, then wasmtime copies it into the guest): eight
/// bytes a value, a cast's output, and each string's bytes and header.
fn copy_bytes(array: &dyn Array) -> usize {
    match array.as_any().downcast_ref::<StringArray>() {
        // A `String` (24 bytes) and its bytes a value.
        Some(a) => array.len().saturating_mul(24).saturating_add(a.value_data().len()),
        // A value, and a widening cast on the way.
        None => array.len().saturating_mul(16),
    }
}

/// Cast a numeric or boolean column to `to`, for the `read-*` copies.
fn cast_numeric(array: &ArrayRef, to: &ArrowType, accepts: &[ArrowType], name: &str) -> Result<ArrayRef, WitError> {
    if !accepts.contains(array.data_type())
        && !matches!((array.data_type(), to), (ArrowType::Timestamp(..), ArrowType::Int64))
    {
        return Err(type_mismatch(name, array.data_type()));
    }
    let source = match array.data_type() {
        // Timestamps read as their raw counts.
        ArrowType::Timestamp(..) => cast(array, &ArrowType::Int64),
        _ => Ok(array.clone()),
    }
    .map_err(|e| WitError::TypeMismatch(e.to_string()))?;
    cast(&source, to).map_err(|e| WitError::TypeMismatch(e.to_string()))
}

const NUMERIC: [ArrowType; 5] =
    [ArrowType::Boolean, ArrowType::Int32, ArrowType::Int64, ArrowType::Float32, ArrowType::Float64];

impl types::HostColumn for StageState {
    fn from_f64(
        &mut self,
        values: Vec<f64>,
        valid: Option<Vec<bool>>,
    ) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        self.push_primitive::<Float64Type>(values, valid)
    }

    fn from_f32(
        &mut self,
        values: Vec<f32>,
        valid: Option<Vec<bool>>,
    ) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        self.push_primitive::<Float32Type>(values, valid)
    }

    fn from_i64(
        &mut self,
        values: Vec<i64>,
        valid: Option<Vec<bool>>,
    ) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        self.push_primitive::<Int64Type>(values, valid)
    }

    fn from_i32(
        &mut self,
        values: Vec<i32>,
        valid: Option<Vec<bool>>,
    ) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        self.push_primitive::<Int32Type>(values, valid)
    }

    fn from_bool(
        &mut self,
        values: Vec<bool>,
        valid: Option<Vec<bool>>,
    ) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        let nulls = match validity(values.len(), valid) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        let array: ArrayRef = Arc::new(BooleanArray::new(values.into(), nulls));
        Ok(Ok(self.push_column(array)?))
    }

    fn from_utf8(&mut self, values: Vec<Option<String>>) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        let bytes: usize = values.iter().map(|v| v.as_ref().map_or(0, String::len)).sum();
        self.budget.reserve(bytes + 5 * values.len())?;
        let array: ArrayRef = Arc::new(StringArray::from(values));
        Ok(Ok(self.push_column(array)?))
    }

    fn len(&mut self, this: Resource<ColumnHandle>) -> Result<u64> {
        Ok(self.table.get(&this)?.0.len() as u64)
    }

    fn data_type(&mut self, this: Resource<ColumnHandle>) -> Result<DataType> {
        Ok(data_type(self.table.get(&this)?.0.data_type()))
    }

    fn null_count(&mut self, this: Resource<ColumnHandle>) -> Result<u64> {
        Ok(self.table.get(&this)?.0.null_count() as u64)
    }

    fn slice(
        &mut self,
        this: Resource<ColumnHandle>,
        offset: u64,
        length: u64,
    ) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        let array = &self.table.get(&this)?.0;
        if offset.checked_add(length).is_none_or(|end| end > array.len() as u64) {
            return Ok(Err(WitError::InvalidArgument(format!(
                "slice {offset}..{offset}+{length} runs past the column's {} rows",
                array.len()
            ))));
        }
        let sliced = array.slice(offset as usize, length as usize);
        Ok(Ok(self.push_column(sliced)?))
    }

    fn validity(&mut self, this: Resource<ColumnHandle>) -> Result<Option<Vec<bool>>> {
        let array = &self.table.get(&this)?.0;
        self.budget.check_time()?;
        self.budget.reserve(copy_bytes(array.as_ref()))?;
        Ok(array.logical_nulls().filter(|n| n.null_count() > 0).map(|n| n.iter().collect()))
    }

    fn read_f64(&mut self, this: Resource<ColumnHandle>) -> Result<Result<Vec<f64>, WitError>> {
        let array = &self.table.get(&this)?.0;
        self.budget.check_time()?;
        self.budget.reserve(copy_bytes(array.as_ref()))?;
        Ok(cast_numeric(array, &ArrowType::Float64, &NUMERIC, "a numeric column").map(|a| {
            let a = a.as_any().downcast_ref::<Float64Array>().expect("cast to f64");
            match a.nulls() {
                None => a.values().to_vec(),
                Some(_) => a.iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
            }
        }))
    }

    fn read_f32(&mut self, this: Resource<ColumnHandle>) -> Result<Result<Vec<f32>, WitError>> {
        let array = &self.table.get(&this)?.0;
        self.budget.check_time()?;
        self.budget.reserve(copy_bytes(array.as_ref()))?;
        Ok(cast_numeric(array, &ArrowType::Float32, &NUMERIC, "a numeric column").map(|a| {
            let a = a.as_any().downcast_ref::<Float32Array>().expect("cast to f32");
            match a.nulls() {
                None => a.values().to_vec(),
                Some(_) => a.iter().map(|v| v.unwrap_or(f32::NAN)).collect(),
            }
        }))
    }

    fn read_i64(&mut self, this: Resource<ColumnHandle>) -> Result<Result<Vec<i64>, WitError>> {
        let array = &self.table.get(&this)?.0;
        self.budget.check_time()?;
        self.budget.reserve(copy_bytes(array.as_ref()))?;
        let accepts = [ArrowType::Boolean, ArrowType::Int32, ArrowType::Int64];
        Ok(cast_numeric(array, &ArrowType::Int64, &accepts, "an integer, boolean or timestamp column").map(|a| {
            let a = a.as_any().downcast_ref::<Int64Array>().expect("cast to i64");
            a.iter().map(|v| v.unwrap_or(0)).collect()
        }))
    }

    fn read_i32(&mut self, this: Resource<ColumnHandle>) -> Result<Result<Vec<i32>, WitError>> {
        let array = &self.table.get(&this)?.0;
        self.budget.check_time()?;
        self.budget.reserve(copy_bytes(array.as_ref()))?;
        let accepts = [ArrowType::Boolean, ArrowType::Int32];
        Ok(cast_numeric(array, &ArrowType::Int32, &accepts, "an int32 or boolean column").map(|a| {
            let a = a.as_any().downcast_ref::<Int32Array>().expect("cast to i32");
            a.iter().map(|v| v.unwrap_or(0)).collect()
        }))
    }

    fn read_bool(&mut self, this: Resource<ColumnHandle>) -> Result<Result<Vec<bool>, WitError>> {
        let array = &self.table.get(&this)?.0;
        self.budget.check_time()?;
        self.budget.reserve(copy_bytes(array.as_ref()))?;
        Ok(match array.as_any().downcast_ref::<BooleanArray>() {
            Some(a) => Ok(a.iter().map(|v| v.unwrap_or(false)).collect()),
            None => Err(type_mismatch("a boolean column", array.data_type())),
        })
    }

    fn read_utf8(&mut self, this: Resource<ColumnHandle>) -> Result<Result<Vec<Option<String>>, WitError>> {
        let array = &self.table.get(&this)?.0;
        self.budget.check_time()?;
        self.budget.reserve(copy_bytes(array.as_ref()))?;
        Ok(match array.as_any().downcast_ref::<StringArray>() {
            Some(a) => Ok(a.iter().map(|v| v.map(str::to_owned)).collect()),
            None => Err(type_mismatch("a utf8 column", array.data_type())),
        })
    }

    fn drop(&mut self, rep: Resource<ColumnHandle>) -> Result<()> {
        self.delete_column(rep)
    }
}

/// Build a batch from named arrays, checking lengths and names.
fn assemble(columns: Vec<(String, ArrayRef)>) -> Result<RecordBatch, WitError> {
    let Some(first) = columns.first() else {
        return Err(WitError::InvalidArgument("a batch needs at least one column".into()));
    };
    check_width(columns.len())?;
    columns.iter().try_for_each(|(name, _)| check_name(name))?;
    let rows = first.1.len();
    let mut fields = Vec::with_capacity(columns.len());
    let mut seen = std::collections::HashSet::with_capacity(columns.len());
    for (name, array) in &columns {
        if array.len() != rows {
            return Err(WitError::LengthMismatch(format!(
                "column {name:?} has {} rows but column {:?} has {rows}",
                array.len(),
                first.0
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(WitError::InvalidArgument(format!("column name {name:?} appears twice")));
        }
        fields.push(ArrowField::new(name, array.data_type().clone(), array.null_count() > 0));
    }
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), arrays)
        .map_err(|e| WitError::InvalidArgument(e.to_string()))
}

/// Most columns a batch may have: as many as wasmpipe reads from a file.
/// Columns may share one array, so a batch's bytes are not bounded by the
/// arrays the stage holds; its width is.
fn check_width(columns: usize) -> Result<(), WitError> {
    if columns > MAX_BATCH_COLUMNS {
        return Err(WitError::InvalidArgument(format!(
            "a batch of {columns} columns; at most {MAX_BATCH_COLUMNS} are allowed"
        )));
    }
    Ok(())
}

/// See [`check_width`]; the same as the readers' limit.
pub const MAX_BATCH_COLUMNS: usize = 10_000;

/// Longest column name a stage may give, in bytes. Names are copied into
/// every batch, part footer, task record and quarantined row: unbounded,
/// 10,000 columns of megabyte names would be gigabytes per copy.
pub const MAX_NAME_BYTES: usize = 1 << 10;

fn check_name(name: &str) -> Result<(), WitError> {
    if name.len() > MAX_NAME_BYTES {
        let head: String = name.chars().take(40).collect();
        return Err(WitError::InvalidArgument(format!(
            "a column name of {} bytes ({head:?}…); at most {MAX_NAME_BYTES} are allowed",
            name.len()
        )));
    }
    Ok(())
}

/// Bytes of a batch's rows, each column counted as often as it appears
/// (a copy of the batch, its rendering or its encoding touches each).
pub(crate) fn batch_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().fold(0usize, |acc, c| {
        let bytes = c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size());
        acc.saturating_add(bytes)
    })
}

/// Bytes of the columns of a batch that repeat the values of an earlier
/// column (the same array, or the same rows of one buffer): memory the
/// batch does not hold but any copy or encoding of it takes.
pub(crate) fn repeated_bytes(batch: &RecordBatch) -> usize {
    let mut seen = std::collections::HashSet::new();
    batch.columns().iter().fold(0usize, |acc, c| {
        let data = c.to_data();
        let key = (data.buffers().first().map(|b| b.as_ptr() as usize), data.offset(), data.len());
        if seen.insert(key) {
            return acc;
        }
        acc.saturating_add(data.get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
    })
}

/// Replace or append columns, keeping the nullability of untouched fields.
fn replace_columns(batch: &RecordBatch, set: Vec<(String, ArrayRef)>) -> Result<RecordBatch, WitError> {
    check_width(batch.num_columns() + set.len())?;
    set.iter().try_for_each(|(name, _)| check_name(name))?;
    let schema = batch.schema();
    let mut fields: Vec<ArrowField> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
    for (name, array) in set {
        if array.len() != batch.num_rows() {
            return Err(WitError::LengthMismatch(format!(
                "column {name:?} has {} rows but the batch has {}",
                array.len(),
                batch.num_rows()
            )));
        }
        let field = ArrowField::new(&name, array.data_type().clone(), array.null_count() > 0);
        match fields.iter().position(|f| f.name() == &name) {
            Some(i) => {
                let nullable = fields[i].is_nullable() || field.is_nullable();
                fields[i] = field.with_nullable(nullable);
                arrays[i] = array;
            }
            None => {
                fields.push(field);
                arrays.push(array);
            }
        }
    }
    let schema = ArrowSchema::new_with_metadata(fields, schema.metadata().clone());
    RecordBatch::try_new(Arc::new(schema), arrays).map_err(|e| WitError::InvalidArgument(e.to_string()))
}

fn column_index(batch: &RecordBatch, name: &str) -> Result<usize, WitError> {
    batch.schema().index_of(name).map_err(|_| {
        // Name a few: a batch may have thousands of columns.
        const SHOWN: usize = 20;
        let fields = batch.schema().fields().clone();
        let mut names: Vec<&str> = fields.iter().take(SHOWN).map(|f| f.name().as_str()).collect();
        let more = fields.len().saturating_sub(SHOWN);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        names.sort_unstable();
        WitError::ColumnNotFound(format!("{name:?} (the batch has {}{more})", names.join(", ")))
    })
}

impl StageState {
    /// A primitive column from guest values and optional validity.
    fn push_primitive<T: ArrowPrimitiveType>(
        &mut self,
        values: Vec<T::Native>,
        valid: Option<Vec<bool>>,
    ) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        let column = validity(values.len(), valid)
            .map(|nulls| Arc::new(PrimitiveArray::<T>::new(values.into(), nulls)) as ArrayRef);
        self.push_result_column(column)
    }

    fn push_result_batch(
        &mut self,
        r: Result<RecordBatch, WitError>,
    ) -> Result<Result<Resource<BatchHandle>, WitError>> {
        Ok(match r {
            Ok(b) => Ok(self.push_new_batch(b)?),
            Err(e) => Err(e),
        })
    }

    fn push_result_column(
        &mut self,
        r: Result<ArrayRef, WitError>,
    ) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        Ok(match r {
            Ok(a) => Ok(self.push_column(a)?),
            Err(e) => Err(e),
        })
    }
}

impl types::HostBatch for StageState {
    fn from_columns(
        &mut self,
        columns: Vec<(String, Resource<ColumnHandle>)>,
    ) -> Result<Result<Resource<BatchHandle>, WitError>> {
        let mut arrays = Vec::with_capacity(columns.len());
        for (name, handle) in &columns {
            arrays.push((name.clone(), self.table.get(handle)?.0.clone()));
        }
        let batch = assemble(arrays);
        self.push_result_batch(batch)
    }

    fn num_rows(&mut self, this: Resource<BatchHandle>) -> Result<u64> {
        Ok(self.table.get(&this)?.0.num_rows() as u64)
    }

    fn schema(&mut self, this: Resource<BatchHandle>) -> Result<Vec<Field>> {
        let batch = &self.table.get(&this)?.0;
        Ok(batch
            .schema()
            .fields()
            .iter()
            .map(|f| Field { name: f.name().clone(), data_type: data_type(f.data_type()), nullable: f.is_nullable() })
            .collect())
    }

    fn column(
        &mut self,
        this: Resource<BatchHandle>,
        name: String,
    ) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        let batch = &self.table.get(&this)?.0;
        let column = column_index(batch, &name).map(|i| batch.column(i).clone());
        self.push_result_column(column)
    }

    fn column_at(
        &mut self,
        this: Resource<BatchHandle>,
        index: u32,
    ) -> Result<Result<Resource<ColumnHandle>, WitError>> {
        let batch = &self.table.get(&this)?.0;
        let column = match batch.columns().get(index as usize) {
            Some(c) => Ok(c.clone()),
            None => Err(WitError::InvalidArgument(format!(
                "column index {index} is past the batch's {} columns",
                batch.num_columns()
            ))),
        };
        self.push_result_column(column)
    }

    fn with_column(
        &mut self,
        this: Resource<BatchHandle>,
        name: String,
        values: Resource<ColumnHandle>,
    ) -> Result<Result<Resource<BatchHandle>, WitError>> {
        let array = self.table.get(&values)?.0.clone();
        let batch = replace_columns(&self.table.get(&this)?.0, vec![(name, array)]);
        self.push_result_batch(batch)
    }

    fn select(
        &mut self,
        this: Resource<BatchHandle>,
        names: Vec<String>,
    ) -> Result<Result<Resource<BatchHandle>, WitError>> {
        let batch = &self.table.get(&this)?.0;
        if let Err(e) = check_width(names.len()) {
            return Ok(Err(e));
        }
        let selected = names
            .iter()
            .map(|n| column_index(batch, n))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|idx| batch.project(&idx).map_err(|e| WitError::InvalidArgument(e.to_string())));
        self.push_result_batch(selected)
    }

    fn drop_columns(
        &mut self,
        this: Resource<BatchHandle>,
        names: Vec<String>,
    ) -> Result<Result<Resource<BatchHandle>, WitError>> {
        let batch = &self.table.get(&this)?.0;
        if let Err(e) = check_width(names.len()) {
            return Ok(Err(e));
        }
        let kept = names.iter().map(|n| column_index(batch, n)).collect::<Result<Vec<_>, _>>().and_then(|gone| {
            let gone: std::collections::HashSet<usize> = gone.into_iter().collect();
            let keep: Vec<usize> = (0..batch.num_columns()).filter(|i| !gone.contains(i)).collect();
            batch.project(&keep).map_err(|e| WitError::InvalidArgument(e.to_string()))
        });
        self.push_result_batch(kept)
    }

    fn filter(
        &mut self,
        this: Resource<BatchHandle>,
        mask: Resource<ColumnHandle>,
    ) -> Result<Result<Resource<BatchHandle>, WitError>> {
        let mask = self.table.get(&mask)?.0.clone();
        let batch = &self.table.get(&this)?.0;
        self.budget.check_time()?;
        self.budget.reserve(batch_bytes(batch))?;
        let filtered = match mask.as_any().downcast_ref::<BooleanArray>() {
            None => Err(type_mismatch("a boolean mask", mask.data_type())),
            Some(_) if mask.len() != batch.num_rows() => Err(WitError::LengthMismatch(format!(
                "mask has {} rows but the batch has {}",
                mask.len(),
                batch.num_rows()
            ))),
            Some(m) => {
                arrow::compute::filter_record_batch(batch, m).map_err(|e| WitError::InvalidArgument(e.to_string()))
            }
        };
        self.push_result_batch(filtered)
    }

    fn slice(
        &mut self,
        this: Resource<BatchHandle>,
        offset: u64,
        length: u64,
    ) -> Result<Result<Resource<BatchHandle>, WitError>> {
        let batch = &self.table.get(&this)?.0;
        let sliced = if offset.checked_add(length).is_none_or(|end| end > batch.num_rows() as u64) {
            Err(WitError::InvalidArgument(format!(
                "slice {offset}..{offset}+{length} runs past the batch's {} rows",
                batch.num_rows()
            )))
        } else {
            Ok(batch.slice(offset as usize, length as usize))
        };
        self.push_result_batch(sliced)
    }

    fn drop(&mut self, rep: Resource<BatchHandle>) -> Result<()> {
        self.take_batch(rep).map(drop)
    }
}

impl types::Host for StageState {}

impl host::Host for StageState {
    fn log(&mut self, level: Level, message: String) -> Result<()> {
        self.push_log(LogRecord { level, message });
        Ok(())
    }

    fn config(&mut self) -> Result<String> {
        Ok(self.config_json.to_string())
    }

    fn quarantine(
        &mut self,
        rows: Resource<BatchHandle>,
        reasons: Resource<ColumnHandle>,
    ) -> Result<Result<(), WitError>> {
        let reasons = self.table.get(&reasons)?.0.clone();
        let rows = self.table.get(&rows)?.0.clone();
        if self.phase != Phase::Transform {
            return Ok(Err(WitError::InvalidArgument(
                "quarantine takes rows during `transform` or `close` only; fail the task instead".into(),
            )));
        }
        if reasons.data_type() != &ArrowType::Utf8 {
            return Ok(Err(type_mismatch("utf8 reasons", reasons.data_type())));
        }
        if reasons.len() != rows.num_rows() {
            return Ok(Err(WitError::LengthMismatch(format!(
                "{} reasons for {} quarantined rows",
                reasons.len(),
                rows.num_rows()
            ))));
        }
        self.budget.check_time()?;
        if rows.num_rows() > 0 {
            // The host renders the rows as JSON text (escaped: up to 6
            // bytes a byte) before writing them, every column's name on
            // every row.
            let names: usize = rows.schema().fields().iter().map(|f| f.name().len() + 4).sum();
            let text = batch_bytes(&rows).saturating_add(names.saturating_mul(rows.num_rows()));
            self.budget.reserve(text.saturating_mul(6))?;
            let reasons = cut_reasons(&reasons);
            self.budget.claim(reasons.as_ref())?;
            self.quarantined.push(Quarantined { rows, reasons });
        }
        Ok(Ok(()))
    }

    fn report(&mut self, json: String, table: Option<Resource<BatchHandle>>) -> Result<Result<(), WitError>> {
        let table = match table {
            Some(t) => Some(self.table.get(&t)?.0.clone()),
            None => None,
        };
        if self.phase != Phase::Finalize {
            return Ok(Err(WitError::InvalidArgument("a report is published from `finalize` only".into())));
        }
        self.budget.check_time()?;
        if let Err(e) = check_report(&json) {
            return Ok(Err(e));
        }
        self.budget.hold(json.len())?;
        if let Some(old) = self.report.take() {
            self.budget.release(old.json.len());
        }
        self.report = Some(Report { json, table });
        Ok(Ok(()))
    }
}

/// Largest report a stage may publish, in bytes of JSON. A report is
/// copied into the stage's records, parsed and rendered (pretty-printed,
/// charted) by the host after the instance is gone: its size and nesting
/// bound that work.
pub const MAX_REPORT_BYTES: usize = 8 << 20;

/// Deepest nesting of arrays and objects a report may have.
pub const MAX_REPORT_DEPTH: usize = 32;

/// Whether `json` may be published as a report: JSON, at most
/// [`MAX_REPORT_BYTES`], nested at most [`MAX_REPORT_DEPTH`] deep.
pub(crate) fn check_report(json: &str) -> Result<(), WitError> {
    if json.len() > MAX_REPORT_BYTES {
        return Err(WitError::InvalidArgument(format!(
            "a report of {} bytes; at most {} MiB are allowed (publish large results as the report's table)",
            json.len(),
            MAX_REPORT_BYTES >> 20
        )));
    }
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_REPORT_DEPTH {
        return Err(WitError::InvalidArgument(format!(
            "a report nested {deepest} deep; at most {MAX_REPORT_DEPTH} levels are allowed"
        )));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(json)
        .map(|_| ())
        .map_err(|e| WitError::InvalidArgument(format!("the report is not JSON: {e}")))
}

/// Longest quarantine reason kept, in bytes: a reason says why in a line;
/// the row itself is kept beside it.
pub const REASON_BYTES: usize = 1 << 10;

/// `reasons` with every value cut to [`REASON_BYTES`] (the same array when
/// none is longer).
fn cut_reasons(reasons: &ArrayRef) -> ArrayRef {
    let Some(strings) = reasons.as_any().downcast_ref::<StringArray>() else {
        return reasons.clone();
    };
    if strings.iter().flatten().all(|r| r.len() <= REASON_BYTES) {
        return reasons.clone();
    }
    let kept = strings.iter().map(|r| r.map(|r| cut(r, REASON_BYTES)));
    Arc::new(kept.collect::<StringArray>())
}

/// `text` as a new string of at most `max` bytes (cut on a character
/// boundary, saying how much was cut): a truncated string would keep its
/// whole capacity.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let at = text.floor_char_boundary(max);
    format!("{}... ({} more bytes cut)", &text[..at], text.len() - at)
}

impl StageState {
    /// Record what the guest wrote to WASI stdout/stderr as log lines.
    pub(crate) fn capture_stdio(&mut self, level: Level, bytes: &[u8]) {
        for line in String::from_utf8_lossy(bytes).lines().filter(|l| !l.trim().is_empty()) {
            self.push_log(LogRecord { level, message: line.to_string() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_checked_for_size_depth_and_syntax() {
        assert!(check_report(r#"{"accuracy": 0.9, "curve": [[0, 1], [1, 1]], "note": "[[[[ {{{{"}"#).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_REPORT_DEPTH + 1), "]".repeat(MAX_REPORT_DEPTH + 1));
        let err = check_report(&deep).unwrap_err().to_string();
        assert!(err.contains("nested 33 deep"), "{err}");
        // Brackets in strings, escaped quotes included, are text.
        let quoted = format!(r#"{{"a": "\"{}"}}"#, "[".repeat(100));
        assert!(check_report(&quoted).is_ok());
        let big = format!("[{}1]", "1,".repeat(MAX_REPORT_BYTES / 2));
        assert!(check_report(&big).unwrap_err().to_string().contains("at most 8 MiB"));
        assert!(check_report("{not json").unwrap_err().to_string().contains("not JSON"));
    }

    #[test]
    fn column_names_are_bounded_and_paid_for() {
        let array: ArrayRef = Arc::new(arrow::array::Float64Array::from(vec![1.0]));
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        let err = assemble(vec![(long.clone(), array.clone())]).unwrap_err().to_string();
        assert!(err.contains("a column name of 1025 bytes"), "{err}");
        let batch = assemble(vec![("x".repeat(MAX_NAME_BYTES), array.clone())]).unwrap();
        assert_eq!(batch_cost(&batch), HANDLE_BYTES + FIELD_BYTES + MAX_NAME_BYTES);
        assert!(replace_columns(&batch, vec![(long, array)]).is_err());
    }
}

//! A stage of a plan, prepared to run: its inputs listed and partitioned,
//! its identities computed, the model it applies found. The driver and
//! every task process prepare a stage the same way, from the plan and what
//! the store holds, so they agree on every task's identity.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use wasmpipe_manifest::{ColumnType, Format as ManifestFormat};
use wasmpipe_runtime::{CallError, InstanceSetup, StageComponent, StageInstance, StageKind, TaskInfo};
use wasmpipe_storage::commit::{self, OutputLayout, identity as sha256_hex};
use wasmpipe_storage::read::{self, Chunk, Format, InputFile, Partition};
use wasmpipe_storage::{Storage, StorageError};

use crate::authority::verify_deployed_input;
use crate::cache::PartitionCache;
use crate::plan::{InputRef, LockedPipeline, LockedStage, ModelRef};
use crate::select;
use crate::{Executor, RunError, TaskFailure};
use wasmpipe_storage::registry;

/// The SHA-256 of `bytes`, hex.
pub(crate) fn content_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// When a task must end, by the wall clock, and the limit that set it.
pub(crate) struct Deadline {
    at: Instant,
    limit_s: f64,
}

/// What reading a partition took.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Read {
    /// Rows (and quarantined records) read.
    pub rows: u64,
    /// Bytes read from storage: 0 when the partition's batches were kept
    /// from an earlier read.
    pub bytes: u64,
}

/// A fitted model a stage applies: its bytes and hash.
pub(crate) struct AppliedModel {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// Everything a stage's tasks share.
pub(crate) struct PreparedStage<'a> {
    pub exec: &'a Executor,
    /// How the run reaches its stores (the manifest's `[storage]` options).
    pub storage: &'a Storage,
    pub plan: &'a LockedPipeline,
    pub stage: &'a LockedStage,
    pub component: StageComponent,
    /// The declared schema of text inputs.
    pub schema: Option<SchemaRef>,
    pub partitions: Vec<Partition>,
    /// For each partition of a named output it reads, the route to it.
    pub routes: Vec<Option<Route>>,
    /// The partitions each fit task folds, in order (one empty range for
    /// an empty input).
    pub fit_groups: Vec<Range<usize>>,
    pub output: OutputLayout,
    /// The configuration its instances receive: the plan's, its column
    /// selectors resolved against what the stage reads (see `select`).
    pub config: String,
    /// What each of those selectors selected, by key.
    pub selected: BTreeMap<String, Vec<String>>,
    /// Hash of what determines every task's output besides its partition.
    pub identity: String,
    /// Hash of everything the output depends on: the stage, every
    /// partition it reads, the model it applies.
    pub output_identity: String,
    /// What it read: URLs, with the commit identity of upstream outputs.
    pub lineage: Vec<String>,
    pub applied: Option<AppliedModel>,
    /// Partitions kept decoded for this stage's later reads.
    pub cache: PartitionCache,
}

/// The Arrow schema a stage's declared `schema` reads text inputs as.
pub(crate) fn declared_schema(columns: &indexmap::IndexMap<String, ColumnType>) -> SchemaRef {
    let field = |(name, t): (&String, &ColumnType)| {
        let data_type = match t {
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        };
        Field::new(name, data_type, true)
    };
    Arc::new(Schema::new(columns.iter().map(field).collect::<Vec<_>>()))
}

/// Prepare `stage` of `plan` (loaded as `component`) against what the
/// store holds now: the stages it reads must have committed.
pub(crate) fn prepare<'a>(
    exec: &'a Executor,
    storage: &'a Storage,
    plan: &'a LockedPipeline,
    stage: &'a LockedStage,
    component: StageComponent,
) -> Result<PreparedStage<'a>, RunError> {
    let store = exec.config.store.as_str();
    let storage_err = |source: StorageError| RunError::Storage { stage: stage.name.clone(), source };
    let output = OutputLayout::new(storage.resolve(&stage.output.url(store)).map_err(storage_err)?);

    let format = stage.format.map(|f| match f {
        ManifestFormat::Parquet => Format::Parquet,
        ManifestFormat::Csv => Format::Csv,
        ManifestFormat::Jsonl => Format::Jsonl,
    });
    let mut files: Vec<InputFile> = Vec::new();
    // Per input: how many files, and for a named output the route to it.
    let mut groups: Vec<(usize, Option<Route>)> = Vec::new();
    let mut lineage = Vec::new();
    for input in &stage.inputs {
        let (url, upstream, route) = match input {
            InputRef::Stage { stage: up, output } => {
                let upstream = plan.stage(up)?;
                let route = match (output, &upstream.outputs) {
                    (None, _) => None,
                    (Some(output), Some(outputs)) if outputs.names.contains(output) => {
                        Some(Route { column: outputs.route.clone(), output: output.clone() })
                    }
                    (Some(_), _) => {
                        return Err(RunError::Plan {
                            url: plan.pipeline.clone(),
                            reason: format!(
                                "stage {:?} reads `{input}`, which stage {up:?} does not write",
                                stage.name
                            ),
                        });
                    }
                };
                (upstream.output.url(store), Some(up), route)
            }
            InputRef::Location { url } => (url.clone(), None, None),
        };
        let location = storage.resolve(&url).map_err(storage_err)?;
        let listing = exec.io.block_on(read::list(&location, format)).map_err(storage_err)?;
        for file in &listing.files {
            exec.io.block_on(verify_deployed_input(plan.root.as_deref(), &file.location)).map_err(storage_err)?;
        }
        match (&listing.commit, upstream) {
            (Some(c), _) => lineage.push(match &route {
                Some(r) => format!("{}@{}#{}", location.url(), c.identity, r.output),
                None => format!("{}@{}", location.url(), c.identity),
            }),
            (None, Some(up)) => {
                return Err(storage_err(StorageError::CorruptCommit {
                    url: location.url().into(),
                    reason: format!("stage {up:?} committed no output"),
                }));
            }
            (None, None) => lineage.push(location.url().to_string()),
        }
        let mut listed = listing.files;
        // The parts that hold none of a named output's rows are not read.
        if let (Some(r), Some(c)) = (&route, &listing.commit) {
            let empty: Vec<String> = c
                .parts
                .iter()
                .filter(|p| !p.outputs.is_empty() && p.outputs.get(&r.output).copied().unwrap_or(0) == 0)
                .map(|p| format!("/{}", p.name))
                .collect();
            listed.retain(|f| !empty.iter().any(|name| f.location.url().ends_with(name.as_str())));
        }
        groups.push((listed.len(), route));
        files.extend(listed);
    }
    if stage.schema.is_some()
        && let Some(f) = files.iter().find(|f| f.format == Format::Parquet)
    {
        return Err(RunError::Manifest(wasmpipe_manifest::ManifestError::Invalid(format!(
            "stage {:?} declares a `schema`, which types text inputs (CSV, JSON Lines), but reads {}, a Parquet file that carries its own schema\n  hint: remove `schema`, or read the text files in a stage of their own",
            stage.name,
            f.location.url()
        ))));
    }
    let (partitions, routes) = partition(exec, stage, &files, groups).map_err(storage_err)?;
    let schema = stage.schema.as_ref().map(declared_schema);
    let columns_err = |reason| RunError::Columns { stage: stage.name.clone(), reason };
    let resolved = if select::check(&stage.config).map_err(columns_err)? {
        let read = input_schema(exec, stage, &partitions, &routes, schema.clone())?;
        select::resolve(&stage.config, read.as_deref()).map_err(columns_err)?
    } else {
        select::Resolved { config: stage.config.clone(), selected: BTreeMap::new() }
    };

    let batch_rows = (stage.limits.batch_rows as u64).to_le_bytes();
    let row_group_rows = (stage.limits.row_group_rows as u64).to_le_bytes();
    let shape = format!("{:?} {:?}", stage.columns, stage.schema);
    let mut parts: Vec<&[u8]> =
        vec![component.hash().as_bytes(), resolved.config.as_bytes(), &batch_rows, &row_group_rows, shape.as_bytes()];
    // (Only then: the identities of stages that write rows, the default,
    // are what they were before `emit_rows`.)
    if !stage.emit_rows {
        parts.push(b"fit only");
    }
    // (Named outputs: its rows are checked against them as they are written.)
    let routed = stage.outputs.as_ref().map(|o| format!("outputs {:?} routed by {:?}", o.names, o.route));
    if let Some(routed) = &routed {
        parts.push(routed.as_bytes());
    }
    let identity = sha256_hex(&parts);
    let applied = match &stage.model {
        Some(source) => Some(applied_model(exec, storage, plan, stage, source, &mut lineage)?),
        None => None,
    };
    let output_identity = {
        let mut parts: Vec<String> = vec![identity.clone()];
        parts.extend(partitions.iter().zip(&routes).map(|(p, route)| partition_id(p, route.as_ref())));
        parts.extend(applied.iter().map(|m| m.sha256.clone()));
        sha256_hex(&parts.iter().map(String::as_bytes).collect::<Vec<_>>())
    };
    let mut prepared = PreparedStage {
        exec,
        storage,
        plan,
        stage,
        component,
        schema,
        fit_groups: fit_groups(
            &partitions.iter().map(|p| p.bytes).collect::<Vec<_>>(),
            stage.limits.fit_task_mib << 20,
        ),
        partitions,
        routes,
        output,
        config: resolved.config,
        selected: resolved.selected,
        identity,
        output_identity,
        lineage,
        applied,
        cache: PartitionCache::new(None),
    };
    // A fit may read each partition again in later passes, and then in its
    // transform tasks.
    if exec.config.cache_bytes > 0 && prepared.fits() && stage.limits.max_passes > 1 {
        prepared.cache = PartitionCache::new(Some(exec.cache.clone()));
    }
    Ok(prepared)
}

/// The rows of an upstream output that make one of its named outputs:
/// those whose `column` is `output`.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub column: String,
    pub output: String,
}

impl Route {
    /// The rows of `batch` on this route, without the routing column.
    pub fn rows(&self, batch: RecordBatch) -> Result<RecordBatch, String> {
        let mut batch = batch;
        let index = batch
            .schema()
            .index_of(&self.column)
            .map_err(|_| format!("its input has no column {:?} to read output {:?} by", self.column, self.output))?;
        let values = arrow::compute::cast(batch.column(index), &DataType::Utf8).map_err(|e| e.to_string())?;
        let wanted = arrow::array::StringArray::new_scalar(self.output.as_str());
        let mask = arrow::compute::kernels::cmp::eq(&values, &wanted).map_err(|e| e.to_string())?;
        batch.remove_column(index);
        arrow::compute::filter_record_batch(&batch, &mask).map_err(|e| e.to_string())
    }
}

/// What `p` covers, for task identity: the rows of one named output of
/// it when it is read by `route`.
fn partition_id(p: &Partition, route: Option<&Route>) -> String {
    match route {
        Some(r) => format!("{}#{}={}", p.identity(), r.column, r.output),
        None => p.identity(),
    }
}

/// Split the files of each input group (`(files, route)`, in order) into
/// partitions, each with the route its input reads by; a routed Parquet
/// input must have the routing column.
fn partition(
    exec: &Executor,
    stage: &LockedStage,
    files: &[InputFile],
    groups: Vec<(usize, Option<Route>)>,
) -> Result<(Vec<Partition>, Vec<Option<Route>>), StorageError> {
    let (mut partitions, mut routes) = (Vec::new(), Vec::new());
    let mut start = 0;
    for (count, route) in groups {
        let parts = exec.io.block_on(read::partitions(&files[start..start + count]))?;
        start += count;
        if let Some(r) = &route
            && let Some(p) = parts.first()
            && let Some(schema) = p.schema()
            && schema.index_of(&r.column).is_err()
        {
            return Err(StorageError::Text {
                url: p.file.location.url().into(),
                reason: format!(
                    "stage {:?} reads its output {:?}, but it has no column {:?} to route rows by",
                    stage.name, r.output, r.column
                ),
            });
        }
        routes.extend(std::iter::repeat_n(route, parts.len()));
        partitions.extend(parts);
    }
    Ok((partitions, routes))
}

/// The schema `stage` reads from `partitions` (after its `columns`
/// projection, in its order), for resolving its column selectors: its
/// Parquet files' footers, which must agree; a text input's `declared`
/// schema, or the one inferred from its file (one file: each file of a
/// text input infers its own types); none for an input with no rows.
fn input_schema(
    exec: &Executor,
    stage: &LockedStage,
    partitions: &[Partition],
    routes: &[Option<Route>],
    declared: Option<SchemaRef>,
) -> Result<Option<SchemaRef>, RunError> {
    let storage_err = |source| RunError::Storage { stage: stage.name.clone(), source };
    let columns_err = |reason| RunError::Columns { stage: stage.name.clone(), reason };
    let Some(first) = partitions.first() else { return Ok(None) };
    let text = first.schema().is_none();
    let route = |i: usize| routes.get(i).and_then(Option::as_ref).map(|r| r.column.as_str());
    if let Some(schema) = first.schema() {
        let want = seen(stage, &schema, text, route(0));
        for (i, p) in partitions.iter().enumerate().skip(1) {
            let other = p.schema().map(|s| seen(stage, &s, text, route(i)));
            if other.as_ref().is_some_and(|o| o.fields() != want.fields()) || other.is_none() {
                return Err(columns_err(format!(
                    "its column selectors need one schema, but its input files disagree: {} and {}",
                    first.file.location.url(),
                    p.file.location.url()
                )));
            }
        }
        return Ok(Some(Arc::new(want)));
    }
    if let Some(schema) = declared {
        return Ok(Some(Arc::new(seen(stage, &schema, text, None))));
    }
    if partitions.len() > 1 {
        return Err(columns_err(format!(
            "its column selectors read the columns of a text input of {} files, each of which infers its own types\n  hint: declare the input's `schema`, or ingest the files into Parquet in a stage of their own",
            partitions.len()
        )));
    }
    let inferred = exec.io.block_on(inferred_schema(first)).map_err(storage_err)?;
    Ok(inferred.map(|schema| Arc::new(seen(stage, &schema, text, None))))
}

/// The schema the reader infers for a text partition (none when it has no
/// rows).
pub(crate) async fn inferred_schema(part: &Partition) -> Result<Option<SchemaRef>, StorageError> {
    let mut stream = read::open(part, None, 1024, None).await?;
    while let Some(chunk) = stream.next().await {
        if let Chunk::Rows(batch) = chunk? {
            return Ok(Some(batch.schema()));
        }
    }
    Ok(None)
}

/// What `stage` sees of a schema its input has: projected by its `columns`
/// (a Parquet file's columns stay in the file's order, a `text` file's come
/// in the projection's), without `route`, the routing column of a named
/// output.
pub(crate) fn seen(stage: &LockedStage, schema: &Schema, text: bool, route: Option<&str>) -> Schema {
    let fields: Vec<Arc<Field>> = match &stage.columns {
        Some(columns) if text => {
            columns.iter().filter_map(|c| schema.field_with_name(c).ok()).cloned().map(Arc::new).collect()
        }
        Some(columns) => schema.fields().iter().filter(|f| columns.contains(f.name())).cloned().collect(),
        None => schema.fields().iter().cloned().collect(),
    };
    Schema::new(fields.into_iter().filter(|f| route != Some(f.name().as_str())).collect::<Vec<_>>())
}

/// Where a partition is, for people: `URL row group N`, or the file's URL.
fn place(p: &Partition) -> String {
    match p.row_group {
        Some(rg) => format!("{} row group {rg}", p.file.location.url()),
        None => p.file.location.url().to_string(),
    }
}

/// Consecutive partitions (of `sizes` bytes as stored) packed into fit
/// tasks of at most `target` bytes (a task holds at least one partition;
/// 0: one per partition). Only the data decides, so every engine fits the
/// same tasks and merges the same states.
fn fit_groups(sizes: &[u64], target: u64) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && (target == 0 || bytes.saturating_add(size) > target) {
            groups.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(size);
    }
    // (An empty input is one task, over no partitions.)
    groups.push(start..sizes.len());
    groups
}

/// The model that `source` names, for a stage that applies a model fitted
/// elsewhere instead of fitting one; its lineage entry is added to
/// `lineage`.
pub(crate) fn applied_model(
    exec: &Executor,
    storage: &Storage,
    plan: &LockedPipeline,
    stage: &LockedStage,
    source: &ModelRef,
    lineage: &mut Vec<String>,
) -> Result<AppliedModel, RunError> {
    let store = exec.config.store.as_str();
    let storage_err = |source: StorageError| RunError::Storage { stage: stage.name.clone(), source };
    let model_err = |reason: String| RunError::Model { stage: stage.name.clone(), reason };
    let (url, written) = match source {
        ModelRef::Registry { sha256 } => return registry_model(exec, storage, stage, sha256, lineage),
        ModelRef::Stage { stage: up } => (plan.stage(up)?.output.url(store), format!("stage:{up}")),
        ModelRef::Output { output, written } => (output.url(store), written.clone()),
    };
    let location = storage.resolve(&url).map_err(storage_err)?;
    let record = exec.io.block_on(commit::read(&location)).map_err(storage_err)?;
    let Some(model) = record.and_then(|r| r.model) else {
        return Err(model_err(match written.strip_prefix("pipeline:").and_then(|r| r.split_once('/')) {
            Some((pipeline, fitted)) => format!(
                "`model = \"{written}\"`: {} holds no committed model\n  hint: run pipeline {pipeline:?} with this store first (its estimator stage {fitted:?} commits its model there); `pipeline:` reads a stage's default output <store>/{pipeline}/{fitted}, so for a stage with its own `output`, name that location instead",
                location.url()
            ),
            None => format!(
                "{} holds no committed model; `model` must name the output of an estimator stage that has run",
                location.url()
            ),
        }));
    };
    let bytes = exec.io.block_on(location.child(&model.name).get_verified(&model.sha256)).map_err(storage_err)?;
    lineage.push(format!("model {}@{}", location.url(), model.sha256));
    Ok(AppliedModel { bytes: bytes.to_vec(), sha256: model.sha256 })
}

/// The registry's model `sha` (`model = "sha256:…"`), checked against its
/// hash.
fn registry_model(
    exec: &Executor,
    storage: &Storage,
    stage: &LockedStage,
    sha: &str,
    lineage: &mut Vec<String>,
) -> Result<AppliedModel, RunError> {
    let storage_err = |source: StorageError| RunError::Storage { stage: stage.name.clone(), source };
    let model_err = |reason: String| RunError::Model { stage: stage.name.clone(), reason };
    let root = registry::root(storage, &exec.config.store).map_err(storage_err)?;
    let at = registry::model_location(&root, sha);
    match exec.io.block_on(registry::fetch(&root, sha)) {
        Ok(Some(bytes)) => {
            lineage.push(format!("model sha256:{sha}"));
            Ok(AppliedModel { bytes: bytes.to_vec(), sha256: sha.to_string() })
        }
        Ok(None) => Err(model_err(format!(
            "no model sha256:{sha} in the model registry: {} does not exist\n  hint: `wasmpipe models --store {}` lists the models there; a model enters the registry when an estimator stage fits it with this store",
            at.url(),
            exec.config.store
        ))),
        Err(StorageError::HashMismatch { actual, .. }) => Err(model_err(format!(
            "{} hashes to {actual}, not {sha}: the registry's copy was changed or damaged\n  hint: delete {} and rerun the pipeline that fitted the model",
            at.url(),
            root.child(sha).url()
        ))),
        Err(e) => Err(storage_err(e)),
    }
}

impl PreparedStage<'_> {
    /// Whether the output is committed with this stage's identity: an
    /// identical run (or another attempt of this one) finished the stage.
    pub fn committed(&self) -> Result<bool, StorageError> {
        let record = self.exec.io.block_on(commit::read(&self.output))?;
        Ok(record.is_some_and(|r| r.identity == self.output_identity))
    }

    /// Whether the stage fits (an estimator or an aggregator that does not
    /// apply a model fitted elsewhere).
    pub fn fits(&self) -> bool {
        matches!(self.stage.kind, StageKind::Estimator | StageKind::Aggregator) && self.applied.is_none()
    }

    /// Whether the stage has transform tasks.
    pub fn transforms(&self) -> bool {
        match self.stage.kind {
            StageKind::Transformer => true,
            StageKind::Estimator => self.stage.emit_rows,
            StageKind::Aggregator => false,
        }
    }

    /// What partition `index` covers, for task identity: its identity, and
    /// the named output it reads, if one.
    fn partition_id(&self, index: usize) -> String {
        partition_id(&self.partitions[index], self.routes.get(index).and_then(Option::as_ref))
    }

    /// The identity of the state fit pass `pass` starts from (`carry`).
    pub fn carry_id(carry: Option<&[u8]>) -> String {
        sha256_hex(&[carry.unwrap_or_default()])
    }

    /// Fit task `group` of pass `pass`, starting from the state `carry_id`:
    /// what it folds is the partitions of its group.
    pub fn fit_id(&self, group: usize, pass: u32, carry_id: &str) -> String {
        let members = self.fit_groups.get(group).cloned().unwrap_or_default();
        let parts: String = members.map(|i| self.partition_id(i) + "\n").collect();
        let salt = format!("fit pass {pass} carry {carry_id}");
        sha256_hex(&[self.identity.as_bytes(), parts.as_bytes(), salt.as_bytes()])
    }

    /// Tasks per fit pass: one per group of partitions (see
    /// [`fit_groups`]), and one for an empty input.
    pub fn fit_tasks(&self) -> usize {
        self.fit_groups.len()
    }

    /// The partitions fit task `group` folds.
    pub fn fit_group(&self, group: usize) -> Range<usize> {
        self.fit_groups.get(group).cloned().unwrap_or_default()
    }

    /// The identity of task `index` (`usize::MAX` for a stage-wide task:
    /// a combine, a merge, the fit's result, which depend on every
    /// partition), given what else determines its output (`salt`).
    pub fn task_id(&self, index: usize, salt: &str) -> String {
        let part = match self.partitions.get(index) {
            Some(_) => self.partition_id(index),
            None if index == usize::MAX => self.output_identity.clone(),
            None => String::new(),
        };
        sha256_hex(&[self.identity.as_bytes(), part.as_bytes(), salt.as_bytes()])
    }

    /// How many partial states each level of a pass's merge tree holds:
    /// the fit tasks' first, then groups of `MERGE_FAN_IN`, up to a level
    /// of at most `MERGE_FAN_IN` that the final merge folds.
    pub fn merge_levels(&self) -> Vec<usize> {
        let mut levels = vec![self.fit_tasks()];
        while *levels.last().expect("one level") > crate::task::MERGE_FAN_IN {
            let n = levels.last().expect("one level").div_ceil(crate::task::MERGE_FAN_IN);
            levels.push(n);
        }
        levels
    }

    /// Combine task `group` of `level` of pass `pass` (carrying `carry_id`):
    /// what it merges depends on how partitions were packed into fit tasks,
    /// so a run packed otherwise (another `fit_task_mib`) never takes it.
    pub fn combine_id(&self, pass: u32, carry_id: &str, level: u32, group: usize) -> String {
        let packing: String = self.fit_groups.iter().map(|g| format!("{}..{} ", g.start, g.end)).collect();
        self.task_id(
            usize::MAX,
            &format!("combine pass {pass} carry {carry_id} level {level} group {group} of fit tasks {packing}"),
        )
    }

    /// The merge and finalize of fit pass `pass`.
    pub fn merge_id(&self, pass: u32) -> String {
        self.task_id(usize::MAX, &format!("merge pass {pass}"))
    }

    /// Where the finished fit is recorded (the merge that ended it).
    pub fn fit_result_id(&self) -> String {
        self.task_id(usize::MAX, "fit result")
    }

    /// How a failure of fit task `group` of `phase` is described.
    pub fn describe_fit(&self, phase: &str, group: usize) -> String {
        let members = self.fit_group(group);
        if members.len() <= 1 {
            return self.describe(phase, members.start);
        }
        let (first, last) = (&self.partitions[members.start], &self.partitions[members.end - 1]);
        let what = match (first.row_group, last.row_group) {
            (Some(a), Some(b)) if first.file.location.url() == last.file.location.url() => {
                format!("{} row groups {a} to {b}", first.file.location.url())
            }
            _ => format!("{} to {}", place(first), place(last)),
        };
        format!("{phase} partitions {} to {} of {} ({what})", members.start, members.end - 1, self.partitions.len())
    }

    /// How a failure of task `index` of `phase` is described.
    pub fn describe(&self, phase: &str, index: usize) -> String {
        let n = self.partitions.len();
        match self.partitions.get(index) {
            Some(p) => format!("{phase} partition {index} of {n} ({})", place(p)),
            None => format!("{phase} (no input partitions)"),
        }
    }

    /// An instance for the task `task_id`: its random numbers are seeded
    /// from the task's identity, so every attempt writes the same bytes.
    pub fn instantiate(&self, label: String, task_id: &str) -> Result<StageInstance, CallError> {
        let limits = self.stage.limits.instance();
        let setup = InstanceSetup {
            config_json: self.config.as_str().into(),
            label,
            sink: Some(self.exec.log.clone()),
            seed: Sha256::digest(task_id.as_bytes()).into(),
        };
        self.exec.runtime.instantiate(&self.component, &limits, setup)
    }

    /// The wall-clock backstop of a task that starts now.
    pub fn wall_deadline(&self) -> Deadline {
        let wall = self.stage.limits.wall();
        Deadline { at: Instant::now() + wall, limit_s: wall.as_secs_f64() }
    }

    /// Drive `io` to its end on the I/O runtime, unless the task's wall
    /// clock runs out first.
    pub fn block<T, E: Into<TaskFailure>>(
        &self,
        deadline: &Deadline,
        io: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, TaskFailure> {
        let left = deadline.at.saturating_duration_since(Instant::now());
        // (The timer is made inside the runtime, whose clock it needs.)
        match self.exec.io.block_on(async { tokio::time::timeout(left, io).await }) {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(TaskFailure::WallClock { limit_s: deadline.limit_s }),
        }
    }

    /// What fit task `group` is told about itself: its place among the
    /// pass's fit tasks.
    pub fn fit_task_info(&self, group: usize, pass: u32) -> TaskInfo {
        TaskInfo { partitions: self.fit_tasks() as u32, ..self.task_info(group, pass) }
    }

    pub fn task_info(&self, index: usize, pass: u32) -> TaskInfo {
        TaskInfo {
            pipeline: self.plan.pipeline.clone(),
            stage: self.stage.name.clone(),
            partition: index as u32,
            partitions: self.partitions.len() as u32,
            pass,
        }
    }

    /// Stream partition `index` through `each`: rows, and text records
    /// that do not parse (as quarantine rows); returns the rows read, both
    /// kinds. Batches an earlier read kept are replayed; with `keep`, a
    /// read from storage keeps its batches for later reads, within the
    /// run's budget (see [`crate::cache`]). I/O is driven on the I/O runtime one batch at a time; `each`
    /// (guest code) runs outside any async context, since WASI's
    /// synchronous host calls block on their own.
    pub fn each_batch(
        &self,
        index: usize,
        keep: bool,
        deadline: &Deadline,
        mut each: impl FnMut(Chunk) -> Result<(), TaskFailure>,
    ) -> Result<Read, TaskFailure> {
        let Some(part) = self.partitions.get(index) else {
            return Ok(Read::default());
        };
        let rows_of = |chunk: &Chunk| match chunk {
            Chunk::Rows(b) | Chunk::Quarantined(b) => b.num_rows() as u64,
        };
        if let Some(kept) = self.cache.get(index) {
            let mut rows = 0;
            for chunk in kept.iter() {
                if Instant::now() >= deadline.at {
                    return Err(TaskFailure::WallClock { limit_s: deadline.limit_s });
                }
                rows += rows_of(chunk);
                each(chunk.clone())?;
            }
            return Ok(Read { rows, bytes: 0 });
        }
        let route = self.routes.get(index).and_then(Option::as_ref);
        // A named output reads its routing column too, then drops it.
        let columns: Option<Vec<String>> = self.stage.columns.clone().map(|mut columns| {
            if let Some(r) = route
                && !columns.contains(&r.column)
            {
                columns.push(r.column.clone());
            }
            columns
        });
        let mut stream = self
            .block(deadline, read::open(part, columns.as_deref(), self.stage.limits.batch_rows, self.schema.clone()))?;
        let mut keeping = if keep { self.cache.keeping() } else { None };
        let mut rows = 0;
        while let Some(chunk) = self.block(deadline, async { Ok::<_, StorageError>(stream.next().await) })? {
            let chunk = match (chunk?, route) {
                (Chunk::Rows(batch), Some(route)) => Chunk::Rows(route.rows(batch).map_err(|reason| {
                    TaskFailure::Storage(StorageError::Text { url: part.file.location.url().into(), reason })
                })?),
                (chunk, _) => chunk,
            };
            rows += rows_of(&chunk);
            keeping = keeping.and_then(|k| k.add(&chunk));
            each(chunk)?;
        }
        if let Some(k) = keeping {
            k.finish(index);
        }
        Ok(Read { rows, bytes: part.bytes })
    }

    /// Where partition `index` was read from, as quarantine rows name it.
    pub fn source(&self, index: usize) -> String {
        self.partitions.get(index).map_or_else(String::new, |p| match p.row_group {
            Some(rg) => format!("{}#rg{rg}", p.file.location.url()),
            None => p.file.location.url().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fit_groups;

    #[test]
    fn fit_tasks_pack_consecutive_partitions_up_to_the_target() {
        assert_eq!(fit_groups(&[], 8), vec![0..0]);
        assert_eq!(fit_groups(&[3, 3, 3, 3, 3], 8), vec![0..2, 2..4, 4..5]);
        assert_eq!(fit_groups(&[3, 3, 3], 0), vec![0..1, 1..2, 2..3]);
        // A partition above the target is a task of its own.
        assert_eq!(fit_groups(&[20, 1, 1, 20, 1], 8), vec![0..1, 1..3, 3..4, 4..5]);
        assert_eq!(fit_groups(&[1; 29], 1 << 20), vec![0..29]);
    }
}

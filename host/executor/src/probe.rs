//! The checks before any data moves. Every stage is opened as its first
//! task would open it, which is where it reads its configuration, and,
//! where the schema it will read is known, handed an empty batch of that
//! schema, as dbt's `--empty` runs a model on no rows. The stage's own code
//! decides what is valid: a misspelt key, a column it needs that its input
//! lacks, a column of a type it does not take, each fails the run in its
//! first second, every stage that rejects what it was given named.
//!
//! What a stage will read is known before the run when it reads locations
//! (a Parquet footer, a declared schema, or a single text file's inferred
//! one), or a stage whose output schema the dry run found: a transformer
//! answers the empty batch with the schema it writes. An estimator's rows
//! need its model, which does not exist yet, so the stages after it are
//! checked against their configuration only, and against their columns
//! when their tasks read them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use sha2::{Digest, Sha256};
use wasmpipe_runtime::{CallError, InstanceLimits, InstanceSetup, StageComponent, StageKind, TaskInfo};
use wasmpipe_storage::read::{self, Format};
use wasmpipe_storage::{Storage, StorageError};

use crate::authority::verify_deployed_input;
use crate::plan::{InputRef, LockedPipeline, LockedStage, ModelRef};
use crate::stage::{applied_model, declared_schema, inferred_schema, seen};
use crate::{Executor, RunError, select};

/// The most CPU one stage's check may take; a stage that takes longer is
/// checked by its tasks.
const CHECK_CPU: std::time::Duration = std::time::Duration::from_secs(2);

/// How far a stage was checked before the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Its configuration, and its columns against the schema it will read
    /// (this many columns).
    Columns(usize),
    /// Its configuration; its columns are checked when its tasks read
    /// them, since what it reads comes from a stage whose output schema is
    /// known only when that stage has run (`after`).
    Config {
        /// The stage upstream whose output schema is not known yet.
        after: Option<String>,
    },
    /// Its configuration; its dry run on no rows failed otherwise than by
    /// rejecting its configuration or columns (it gave up, trapped, or ran
    /// out of time), which its tasks, given rows, may not: they report it.
    DryRun {
        /// What it said, first line.
        why: String,
    },
    /// When it starts: it applies a fitted model (which does not exist
    /// yet), or selects its columns from an input whose schema is known
    /// only then.
    AtStart {
        /// Why, in words.
        why: &'static str,
    },
}

/// What the checks before the run found, stage by stage in plan order.
#[derive(Debug, Clone, Default)]
pub struct ConfigCheck {
    /// Each stage's name and how far it was checked.
    pub stages: Vec<(String, Checked)>,
    /// The schema each stage will write, where it was found before the run.
    pub writes: BTreeMap<String, SchemaRef>,
}

impl ConfigCheck {
    /// How many stages were checked each way: against their columns, their
    /// configuration only, when they start.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |f: fn(&Checked) -> bool| self.stages.iter().filter(|(_, c)| f(c)).count();
        (
            count(|c| matches!(c, Checked::Columns(_))),
            count(|c| matches!(c, Checked::Config { .. } | Checked::DryRun { .. })),
            count(|c| matches!(c, Checked::AtStart { .. })),
        )
    }
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checked::Columns(1) => write!(f, "config and columns checked against the 1 column it will read"),
            Checked::Columns(n) => write!(f, "config and columns checked against the {n} columns it will read"),
            Checked::DryRun { why } => write!(
                f,
                "config checked; its dry run on no rows failed ({why}), so its columns are checked when its tasks read them"
            ),
            Checked::Config { after: Some(up) } => write!(
                f,
                "config checked; its columns when its tasks read them (what stage {up:?} writes is known once it has run)"
            ),
            Checked::Config { after: None } => write!(f, "config checked; its columns when its tasks read them"),
            Checked::AtStart { why } => write!(f, "checked when it starts ({why})"),
        }
    }
}

/// A stage's verdict: how far it was checked and the schema it writes, if
/// known; or why the check stopped.
type Verdict = Result<(Checked, Option<SchemaRef>), Stop>;

/// Why a stage's check stopped short of a verdict.
enum Stop {
    /// The stage rejects what it was given, or its input is not there.
    Rejects(String),
    /// Reading its input failed in a way a retry may mend (a store that
    /// did not answer): the run fails with it, as it would have.
    Fails(RunError),
}

impl From<String> for Stop {
    fn from(why: String) -> Stop {
        Stop::Rejects(why)
    }
}

impl Stop {
    /// Reading `stage`'s input or model failed with `e`.
    fn reading(stage: &LockedStage, e: StorageError) -> Stop {
        if crate::error::is_transient(&e) {
            Stop::Fails(RunError::Storage { stage: stage.name.clone(), source: e })
        } else {
            Stop::Rejects(e.to_string())
        }
    }
}

impl Executor {
    /// Have every stage of `plan` (loaded as `components`) check its
    /// configuration, and its columns where the schema it reads is known,
    /// before any data moves; locations resolve through `storage`. Every
    /// stage that rejects what it was given is named in one error.
    pub fn check_configs(
        &self,
        plan: &LockedPipeline,
        components: &[StageComponent],
        storage: &Storage,
    ) -> Result<ConfigCheck, RunError> {
        let mut writes: HashMap<&str, Option<SchemaRef>> = HashMap::new();
        let mut read: HashMap<&str, SchemaRef> = HashMap::new();
        let mut checked = ConfigCheck::default();
        let mut rejected = Vec::new();
        // The stages that read what a rejected stage writes, at any remove:
        // not checked against their columns, which depend on it.
        let mut after_rejected: Vec<&str> = Vec::new();
        for (stage, component) in plan.stages.iter().zip(components) {
            let verdict = self.reads(storage, plan, stage, &writes).and_then(|(reads, after)| {
                if let Some(reads) = &reads {
                    read.insert(&stage.name, reads.clone());
                }
                self.probe(storage, plan, stage, component, reads.as_ref(), &read).map(|(how, wrote)| match how {
                    Checked::Config { .. } => (Checked::Config { after }, wrote),
                    how => (how, wrote),
                })
            });
            match verdict {
                Ok((how, wrote)) => {
                    let upstream = stage.inputs.iter().filter_map(|i| match i {
                        InputRef::Stage { stage, .. } => Some(stage),
                        InputRef::Location { .. } => None,
                    });
                    let model = match &stage.model {
                        Some(ModelRef::Stage { stage }) => Some(stage),
                        _ => None,
                    };
                    if upstream
                        .chain(model)
                        .any(|up| rejected.iter().any(|(r, _)| r == up) || after_rejected.contains(&up.as_str()))
                    {
                        after_rejected.push(&stage.name);
                    }
                    checked.stages.push((stage.name.clone(), how));
                    if let Some(wrote) = &wrote {
                        checked.writes.insert(stage.name.clone(), wrote.clone());
                    }
                    writes.insert(&stage.name, wrote);
                }
                Err(Stop::Rejects(why)) => {
                    rejected.push((stage.name.clone(), why));
                    writes.insert(&stage.name, None);
                }
                Err(Stop::Fails(e)) => return Err(e),
            }
        }
        if rejected.is_empty() {
            return Ok(checked);
        }
        Err(RunError::Config { rejected, unchecked: after_rejected.into_iter().map(String::from).collect() })
    }

    /// Open `stage` (loaded as `component`) with `config` and no data, as
    /// its first task would: why it rejects that configuration, if it does.
    pub(crate) fn check_config(
        &self,
        plan: &LockedPipeline,
        stage: &LockedStage,
        component: &StageComponent,
        config: &str,
    ) -> Result<(), String> {
        match self.dry_run(plan, stage, component, config, None, None) {
            Err(Stop::Rejects(why)) => Err(why),
            Err(Stop::Fails(_)) | Ok(_) => Ok(()),
        }
    }

    /// The schema `stage` will read, when it is known before the run; else
    /// the stage upstream whose output is not known yet, if that is why.
    /// A projection (`columns`) naming a column its input lacks is refused.
    fn reads(
        &self,
        storage: &Storage,
        plan: &LockedPipeline,
        stage: &LockedStage,
        writes: &HashMap<&str, Option<SchemaRef>>,
    ) -> Result<(Option<SchemaRef>, Option<String>), Stop> {
        let mut schemas = Vec::new();
        for input in &stage.inputs {
            let (schema, text, route) = match input {
                InputRef::Stage { stage: up, output } => {
                    if stage.schema.is_some() {
                        return Err(declared_over_parquet(&format!("`{input}`, the Parquet a stage writes")).into());
                    }
                    let Some(Some(wrote)) = writes.get(up.as_str()) else { return Ok((None, Some(up.clone()))) };
                    let route = match output {
                        Some(_) => plan.stage(up).ok().and_then(|s| s.outputs.as_ref()).map(|o| o.route.as_str()),
                        None => None,
                    };
                    (wrote.clone(), false, route)
                }
                InputRef::Location { url } => match self.location_schema(storage, plan, stage, url)? {
                    Some((schema, text)) => (schema, text, None),
                    None => return Ok((None, None)),
                },
            };
            // (A named output's rows come without their routing column.)
            let has = |c: &str| schema.field_with_name(c).is_ok() && route != Some(c);
            if let Some(missing) = stage.columns.iter().flatten().find(|c| !has(c)) {
                let names: Vec<&str> =
                    schema.fields().iter().map(|f| f.name().as_str()).filter(|n| route != Some(*n)).collect();
                return Err(Stop::Rejects(format!(
                    "columns: reads column {missing:?}, which `{input}` does not have (its columns: {})\n  hint: fix `columns` in [stage.{}]",
                    names.join(", "),
                    stage.name
                )));
            }
            schemas.push(Arc::new(seen(stage, &schema, text, route)));
        }
        // Inputs of different schemas: the tasks see each as it is.
        Ok(match schemas.split_first() {
            Some((first, rest)) if rest.iter().all(|s| s.fields() == first.fields()) => (Some(first.clone()), None),
            _ => (None, None),
        })
    }

    /// The schema of the location `url`, as `stage` reads it (before its
    /// projection), and whether it is text: the first file's Parquet
    /// schema, the declared schema of text files (whose columns the first
    /// CSV file must have), or the schema inferred from a single text file;
    /// none for several text files without a declared schema (each infers
    /// its own). A location that cannot be listed, or a first file that
    /// cannot be read, fails the check as it would fail the run.
    fn location_schema(
        &self,
        storage: &Storage,
        plan: &LockedPipeline,
        stage: &LockedStage,
        url: &str,
    ) -> Result<Option<(SchemaRef, bool)>, Stop> {
        let format = stage.format.map(|f| match f {
            wasmpipe_manifest::Format::Parquet => Format::Parquet,
            wasmpipe_manifest::Format::Csv => Format::Csv,
            wasmpipe_manifest::Format::Jsonl => Format::Jsonl,
        });
        let read = |e: StorageError| Stop::reading(stage, e);
        let location = storage.resolve(url).map_err(read)?;
        let listing = self.io.block_on(read::list(&location, format)).map_err(read)?;
        let Some(first) = listing.files.first() else { return Ok(None) };
        let text = first.format != Format::Parquet;
        let declared = stage.schema.as_ref().map(declared_schema);
        if text && declared.is_none() && listing.files.len() > 1 {
            return Ok(None);
        }
        self.io.block_on(verify_deployed_input(plan.root.as_deref(), &first.location)).map_err(read)?;
        let parts = self.io.block_on(read::partitions(std::slice::from_ref(first))).map_err(read)?;
        let Some(part) = parts.first() else { return Ok(None) };
        if let Some(schema) = part.schema() {
            if declared.is_some() {
                return Err(declared_over_parquet(&format!("{}, a Parquet file", first.location.url())).into());
            }
            return Ok(Some((schema, false)));
        }
        // A text file: what its first rows hold (a CSV file's header).
        let inferred = self.io.block_on(inferred_schema(part)).map_err(read)?;
        match (declared, inferred) {
            (Some(declared), Some(inferred)) => {
                let file = first.location.url();
                if first.format == Format::Csv
                    && let Some(missing) =
                        declared.fields().iter().find(|f| inferred.field_with_name(f.name()).is_err())
                {
                    let names: Vec<&str> = inferred.fields().iter().map(|f| f.name().as_str()).collect();
                    return Err(Stop::Rejects(format!(
                        "schema: declares column {:?}, which {file} does not have (its header: {})\n  hint: fix `schema` in [stage.{}]",
                        missing.name(),
                        names.join(", "),
                        stage.name
                    )));
                }
                Ok(Some((declared, true)))
            }
            (Some(declared), None) => Ok(Some((declared, true))),
            (None, inferred) => Ok(inferred.map(|schema| (schema, true))),
        }
    }

    /// Check `stage` against `reads`, the schema it will read if known: its
    /// configuration's selectors resolved, then its dry run. `read` holds
    /// what each stage checked before it reads, where known.
    fn probe(
        &self,
        storage: &Storage,
        plan: &LockedPipeline,
        stage: &LockedStage,
        component: &StageComponent,
        reads: Option<&SchemaRef>,
        read: &HashMap<&str, SchemaRef>,
    ) -> Verdict {
        if let Some(model @ (ModelRef::Registry { .. } | ModelRef::Output { .. })) = &stage.model {
            return self.apply_existing(storage, plan, stage, component, model, reads);
        }
        if let Some(model) = &stage.model {
            // Its rows come from the model, applied as the stage that fits
            // it would: said for it only when that stage is the same
            // component with the same configuration.
            let fitted_alike = match model {
                ModelRef::Stage { stage: fit } => plan
                    .stage(fit)
                    .is_ok_and(|f| f.component.sha256 == stage.component.sha256 && f.config == stage.config),
                _ => false,
            };
            // Its column selectors stand for the columns the model was
            // fitted on: resolved against what the fitting stage reads.
            let fitted_on = match model {
                ModelRef::Stage { stage: fit } => read.get(fit.as_str()),
                _ => None,
            };
            return match reads {
                Some(schema) if fitted_alike => self.describe(plan, stage, component, schema, fitted_on),
                _ if fitted_alike => Ok((Checked::AtStart { why: "it applies a model fitted in this run" }, None)),
                _ => Ok((
                    Checked::AtStart {
                        why: "it applies a model that another stage or run fitted with its own configuration",
                    },
                    None,
                )),
            };
        }
        match resolved(stage, reads)? {
            Some(config) => self.dry_run(plan, stage, component, &config, reads, None),
            None => Ok((selectors_unknown(), None)),
        }
    }

    /// Check `stage`, which applies a model that exists before the run
    /// (the registry's, another run's): the model fetched as its tasks will
    /// fetch it, then the stage opened with it and, where the schema it
    /// will read is known, handed an empty batch of that schema.
    fn apply_existing(
        &self,
        storage: &Storage,
        plan: &LockedPipeline,
        stage: &LockedStage,
        component: &StageComponent,
        model: &ModelRef,
        reads: Option<&SchemaRef>,
    ) -> Verdict {
        let model = match applied_model(self, storage, plan, stage, model, &mut Vec::new()) {
            Ok(model) => model,
            Err(RunError::Model { reason, .. }) => return Err(reason.into()),
            Err(RunError::Storage { source, .. }) => return Err(Stop::reading(stage, source)),
            Err(other) => return Err(other.to_string().into()),
        };
        match resolved(stage, reads)? {
            Some(config) => self.dry_run(plan, stage, component, &config, reads, Some(&model.bytes)),
            None => Ok((selectors_unknown(), None)),
        }
    }

    /// How a check instantiates `stage` with `config`, and the task it
    /// says it is.
    fn check_setup(
        &self,
        plan: &LockedPipeline,
        stage: &LockedStage,
        config: &str,
    ) -> (InstanceLimits, InstanceSetup, TaskInfo) {
        let limits = InstanceLimits { cpu: stage.limits.cpu().min(CHECK_CPU), ..stage.limits.instance() };
        let setup = InstanceSetup {
            config_json: config.into(),
            label: format!("{}[check]", stage.name),
            sink: None,
            seed: Sha256::digest(format!("check {}", stage.name).as_bytes()).into(),
        };
        let info = TaskInfo {
            pipeline: plan.pipeline.clone(),
            stage: stage.name.clone(),
            partition: 0,
            partitions: 1,
            pass: 0,
        };
        (limits, setup, info)
    }

    /// Open `stage` with `config` as its first task would (to fit, or to
    /// apply `model`) and, when `reads` is known, hand it an empty batch of
    /// that schema.
    fn dry_run(
        &self,
        plan: &LockedPipeline,
        stage: &LockedStage,
        component: &StageComponent,
        config: &str,
        reads: Option<&SchemaRef>,
        model: Option<&[u8]>,
    ) -> Verdict {
        let (limits, setup, info) = self.check_setup(plan, stage, config);
        let mut instance = match self.runtime.instantiate(component, &limits, setup) {
            Ok(instance) => instance,
            Err(e) => return said(e),
        };
        // A stage applying a model transforms, as a transformer does.
        let kind = if model.is_some() { StageKind::Transformer } else { stage.kind };
        let open = match kind {
            StageKind::Transformer => instance.open(&info, model),
            StageKind::Estimator | StageKind::Aggregator => instance.fit_open(&info, None),
        };
        if let Err(e) = open {
            return said(e);
        }
        // An iterative fit whose configuration may ask for more passes than
        // the run allows would fail at its limit, after all those passes.
        if kind != StageKind::Transformer {
            match instance.fit_passes(&info) {
                Ok(Some(passes)) if passes > stage.limits.max_passes => {
                    return Err(Stop::Rejects(format!(
                        "invalid config: its fit may take up to {passes} passes, more than its `max_passes` limit of {}\n  hint: raise `max_passes` in [stage.{name}.limits], or change [stage.{name}.config] to take fewer (its `max_iter`, say)",
                        stage.limits.max_passes,
                        name = stage.name
                    )));
                }
                Ok(_) => {}
                Err(e) => return said(e),
            }
        }
        let Some(schema) = reads else { return Ok((Checked::Config { after: None }, None)) };
        let how = Checked::Columns(schema.fields().len());
        let empty = RecordBatch::new_empty(schema.clone());
        match kind {
            StageKind::Transformer => {
                let wrote = match instance.transform(empty) {
                    Ok(Some(batch)) => Some(batch.schema()),
                    Ok(None) => match instance.close() {
                        Ok(batch) => batch.map(|b| b.schema()),
                        Err(e) => return said(e),
                    },
                    Err(e) => return said(e),
                };
                Ok((how, wrote.filter(|_| stage.emit_rows)))
            }
            StageKind::Aggregator => match instance.fit_batch(empty) {
                Ok(()) => Ok((how, None)),
                Err(e) => said(e),
            },
            // What an estimator writes, it says, if it can (`describe`).
            StageKind::Estimator => {
                match instance.fit_batch(empty).and_then(|()| instance.output_schema(&info, schema)) {
                    Ok(wrote) => Ok((how, wrote.map(Arc::new).filter(|_| stage.emit_rows))),
                    Err(e) => said(e),
                }
            }
        }
    }

    /// Check `stage`, which applies a model fitted in this run, against
    /// `reads`: what it writes, as it says before the model exists
    /// (`describe`), its column selectors resolved against `fitted_on`,
    /// what the fitting stage reads; with no model to open, a stage that
    /// does not say is checked when it starts.
    fn describe(
        &self,
        plan: &LockedPipeline,
        stage: &LockedStage,
        component: &StageComponent,
        reads: &SchemaRef,
        fitted_on: Option<&SchemaRef>,
    ) -> Verdict {
        let unchecked = Checked::AtStart { why: "it applies a model fitted in this run" };
        if !component.describes() {
            return Ok((unchecked, None));
        }
        let config = match (select::check(&stage.config)?, fitted_on) {
            (false, _) => stage.config.clone(),
            (true, Some(fitted_on)) => {
                // They resolve against what it reads when it starts, as
                // they did for the fitting stage.
                select::resolve(&stage.config, Some(reads))?;
                select::resolve(&stage.config, Some(fitted_on))?.config
            }
            (true, None) => return Ok((unchecked, None)),
        };
        let (limits, setup, info) = self.check_setup(plan, stage, &config);
        let wrote = self.runtime.instantiate(component, &limits, setup).and_then(|mut i| i.output_schema(&info, reads));
        match wrote {
            Ok(wrote) => Ok((Checked::Columns(reads.fields().len()), wrote.map(Arc::new))),
            Err(e) => said(e),
        }
    }
}

/// `stage`'s configuration with its column selectors resolved against
/// `reads`; none when it has selectors and `reads` is not known.
fn resolved(stage: &LockedStage, reads: Option<&SchemaRef>) -> Result<Option<String>, String> {
    // (A malformed selector was refused with the plan, before this.)
    Ok(match (select::check(&stage.config)?, reads) {
        (false, _) => Some(stage.config.clone()),
        (true, Some(schema)) => Some(select::resolve(&stage.config, Some(schema))?.config),
        (true, None) => None,
    })
}

/// Why a stage with column selectors whose input is not known yet is
/// checked when it starts.
fn selectors_unknown() -> Checked {
    Checked::AtStart {
        why: "its column selectors resolve against what it reads, known once the stages before it have run",
    }
}

/// A stage's verdict from how its check failed: it rejected its
/// configuration or its columns; any other failure (a deadline, a trap) is
/// left to its tasks, which report it with their data.
fn said(e: CallError) -> Verdict {
    match e {
        CallError::Config(why) => Err(format!("invalid config: {why}").into()),
        CallError::Columns(why) => Err(format!("{why} (checked against the schema it will read)").into()),
        other => Ok((Checked::DryRun { why: first_line(&other.to_string()) }, None)),
    }
}

/// What `text` says before any backtrace, on one line, at most 200
/// characters.
fn first_line(text: &str) -> String {
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.contains("backtrace") && !l.starts_with("hint:"))
        .filter(|l| !l.is_empty())
        .collect();
    let line = said.join(" ");
    match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line,
    }
}

/// Why a stage that declares a `schema` cannot read `what`, Parquet.
fn declared_over_parquet(what: &str) -> String {
    format!(
        "schema: declares a schema, which types text inputs (CSV, JSON Lines), but reads {what}, which carries its own schema\n  hint: remove `schema`, or read the text files in a stage of their own"
    )
}

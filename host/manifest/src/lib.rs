//! The pipeline manifest, `wasmpipe.toml`: which stages run, on what data,
//! with which settings.
//!
//! The file is versioned (`version = 1`) and strict: an unknown key is an
//! error, never a silently ignored setting. [`Manifest::parse`] checks the
//! syntax and the pipeline's shape (stage references resolve, no cycles,
//! limits in range); paths stay as written and are resolved against the
//! manifest's directory by the executor.
//!
//! ```
//! let m = wasmpipe_manifest::Manifest::parse(r#"
//!     version = 1
//!     name = "demo"
//!     [stage.clean]
//!     component = "stages/clean"
//!     inputs = ["data/in.csv"]
//! "#).unwrap();
//! assert_eq!(m.order(), vec!["clean"]);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

/// The manifest format version this crate reads.
pub const VERSION: u32 = 1;

/// Where the model registry lives under the store (`<store>/_models`);
/// no pipeline may have this name, whose outputs would land there.
pub const REGISTRY_DIR: &str = "_models";

/// A parsed, validated pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version; must be [`VERSION`].
    pub version: u32,
    /// Pipeline name: letters, digits, `-` and `_`. Names the default output
    /// prefix and appears in lineage.
    pub name: String,
    /// Settings every stage inherits unless it sets its own.
    #[serde(default)]
    pub defaults: Settings,
    /// Options of cloud object stores, by scheme (`s3`, `gs`, `az`):
    /// object_store's configuration keys, such as `endpoint`, `region`,
    /// `allow_http` or `virtual_hosted_style_request`. They override the
    /// standard environment variables (`AWS_ENDPOINT_URL`, ...). Credentials
    /// are refused here: they belong in the environment.
    #[serde(default)]
    pub storage: BTreeMap<String, BTreeMap<String, String>>,
    /// The stages, by name, in the order written.
    #[serde(rename = "stage")]
    pub stages: IndexMap<String, Stage>,
}

/// Execution settings, set in `[defaults]` or per stage.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Most tasks of the stage that run at once (default: the number of
    /// cores, or `--parallelism`).
    pub parallelism: Option<u32>,
    /// Linear-memory cap of each instance, in MiB (default 256; at most
    /// 4096, all that a wasm32 instance can address).
    pub memory_mib: Option<u64>,
    /// Host memory each instance may hold through the host, in MiB: the
    /// arrays behind its handles, kernel outputs and scratch, the rows it
    /// quarantined, its report and kept log lines (default: `memory_mib`).
    /// The batch the host is handing the stage is allowed on top.
    pub host_memory_mib: Option<u64>,
    /// Time each instance may spend in its calls, in seconds (default
    /// 300): the stage's code, the host's work on its behalf (kernels,
    /// quarantined rows) and its waits on the WASI clock.
    pub timeout_s: Option<f64>,
    /// Wall-clock backstop of each task, in seconds, reading and writing
    /// included (default: 4 x `timeout_s` + 60). A task stuck anywhere,
    /// in a call or in storage, fails when it runs out.
    pub wall_timeout_s: Option<f64>,
    /// Rows per batch handed to the stage (default 8192).
    pub batch_rows: Option<usize>,
    /// Rows per row group in the Parquet the stage writes (default: one row
    /// group per input batch size, 8192 rows). Smaller row groups give
    /// downstream stages more partitions.
    pub row_group_rows: Option<usize>,
    /// Input each fit task folds, in MiB as stored (compressed): a fit
    /// packs consecutive partitions into one task until it holds this much
    /// (default 8), so that a pass over many small row groups is a few
    /// tasks and a few partial states, not one per row group. 0: one fit
    /// task per partition.
    pub fit_task_mib: Option<u64>,
    /// Most passes an iterative estimator may ask for (default 100).
    pub max_passes: Option<u32>,
}

/// Built-in defaults for [`Settings`].
pub mod defaults {
    /// Instance memory cap: enough for a stage that copies a few columns
    /// of a default-sized batch, small enough for many at once.
    pub const MEMORY_MIB: u64 = 256;
    /// The most linear memory a wasm32 instance can address: 2^32 bytes.
    pub const MAX_MEMORY_MIB: u64 = 4096;
    /// The largest host-memory budget: far beyond any stage that lets the
    /// host hold batches for it, and small enough that a typo cannot hand
    /// a stage the machine.
    pub const MAX_HOST_MEMORY_MIB: u64 = 65536;
    /// CPU time per instance.
    pub const TIMEOUT_S: f64 = 300.0;
    /// Rows per batch: Arrow's usual batch size.
    pub const BATCH_ROWS: usize = 8192;
    /// Fit passes.
    pub const MAX_PASSES: u32 = 100;
    /// Input per fit task, MiB: a few tens of milliseconds of decoding, so
    /// that a task's fixed costs (an instance, its partial state written
    /// and merged) stay small beside it.
    pub const FIT_TASK_MIB: u64 = 8;
}

impl Settings {
    /// `self` where set, else `fallback`.
    pub fn or(&self, fallback: &Settings) -> Settings {
        Settings {
            parallelism: self.parallelism.or(fallback.parallelism),
            memory_mib: self.memory_mib.or(fallback.memory_mib),
            host_memory_mib: self.host_memory_mib.or(fallback.host_memory_mib),
            timeout_s: self.timeout_s.or(fallback.timeout_s),
            wall_timeout_s: self.wall_timeout_s.or(fallback.wall_timeout_s),
            batch_rows: self.batch_rows.or(fallback.batch_rows),
            row_group_rows: self.row_group_rows.or(fallback.row_group_rows),
            fit_task_mib: self.fit_task_mib.or(fallback.fit_task_mib),
            max_passes: self.max_passes.or(fallback.max_passes),
        }
    }
}

/// One stage of the pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The stage's code: a `.wasm` file (component or core module), or a
    /// stage crate directory that `wasmpipe build` compiles. Relative paths
    /// are relative to the manifest.
    pub component: ComponentSource,
    /// What the stage reads: object-store URLs or paths (a file, or a
    /// directory/prefix of files), `stage:NAME` for an upstream stage's
    /// committed output, or `stage:NAME.OUTPUT` for one of its named
    /// outputs.
    pub inputs: Vec<Input>,
    /// Where the stage writes: a URL or path. Default:
    /// `<store>/<pipeline>/<stage>`.
    pub output: Option<String>,
    /// Input format; default from the file extension (`.parquet`, `.csv`,
    /// `.jsonl`/`.ndjson`/`.json` for JSON Lines).
    pub format: Option<Format>,
    /// The columns of text inputs (CSV, JSON Lines), in order, with their
    /// types: `{ age = "int64", name = "utf8" }`. Only these columns are
    /// read; a value that does not parse as its column's type sends its
    /// record to quarantine. Default: inferred from the first MiB of each
    /// file. Parquet inputs carry their own schema and refuse this.
    pub schema: Option<IndexMap<String, ColumnType>>,
    /// Read only these columns (projection); default all.
    pub columns: Option<Vec<String>>,
    /// Apply an already fitted model instead of fitting one (estimators
    /// only); see [`ModelSource`] for the forms. This is batch prediction,
    /// and how a model fitted on a training split is applied to the test
    /// split.
    pub model: Option<ModelSource>,
    /// Whether an estimator writes rows (its transform: predictions, scaled
    /// columns...) besides fitting. `false` fits only: the output commits
    /// the model and its report, no rows, and no stage may read it.
    /// Default `true`.
    #[serde(default = "emits_rows")]
    pub emit_rows: bool,
    /// Named outputs: the stage writes one output, and each of its rows
    /// belongs to the output its `route` column names. A stage reads one
    /// of them as `stage:NAME.OUTPUT` (those rows, without the `route`
    /// column); `stage:NAME` still reads every row. All of them come from
    /// the same tasks and the same commit, so (for `split`) the sides of a
    /// split cannot disagree.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// The column whose value names each row's output (with `outputs`).
    pub route: Option<String>,
    /// An evaluation that scores a model on the rows it was fitted on, on
    /// purpose: the leakage guard does not warn about it.
    #[serde(default)]
    pub in_sample: bool,
    /// Overrides of `[defaults]`.
    #[serde(default)]
    pub limits: Settings,
    /// The stage's own configuration, handed to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

fn emits_rows() -> bool {
    true
}

/// Where a stage's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentSource {
    /// A compiled `.wasm` file.
    Wasm(PathBuf),
    /// A stage crate to build.
    Crate(PathBuf),
    /// A component pinned by the SHA-256 of its bytes (`sha256:HEX`), as
    /// `wasmpipe deploy` writes: fetched from `components/HEX.wasm` beside
    /// the manifest (in its deployment) and checked against the hash.
    Pinned(String),
}

impl std::fmt::Display for ComponentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComponentSource::Wasm(p) | ComponentSource::Crate(p) => write!(f, "{}", p.display()),
            ComponentSource::Pinned(hex) => write!(f, "sha256:{hex}"),
        }
    }
}

impl<'de> Deserialize<'de> for ComponentSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("`component` is empty: give a .wasm file or a stage crate directory"));
        }
        if let Some(hex) = s.strip_prefix("sha256:") {
            if !is_sha256(hex) {
                return Err(serde::de::Error::custom(format!(
                    "`component = {s:?}`: a pinned component is `sha256:` and 64 lowercase hex digits"
                )));
            }
            return Ok(ComponentSource::Pinned(hex.to_string()));
        }
        Ok(if s.ends_with(".wasm") { ComponentSource::Wasm(s.into()) } else { ComponentSource::Crate(s.into()) })
    }
}

/// One input of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The committed output of the named upstream stage (`stage:NAME`),
    /// or one of its named outputs (`stage:NAME.OUTPUT`).
    Stage {
        /// The upstream stage.
        stage: String,
        /// Its named output, if one.
        output: Option<String>,
    },
    /// An object-store URL or a local path.
    Location(String),
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Stage { stage, output: None } => write!(f, "stage:{stage}"),
            Input::Stage { stage, output: Some(output) } => write!(f, "stage:{stage}.{output}"),
            Input::Location(l) => f.write_str(l),
        }
    }
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.strip_prefix("stage:") {
            Some(name) => Ok(match name.split_once('.') {
                Some((stage, output)) => Input::Stage { stage: stage.into(), output: Some(output.into()) },
                None => Input::Stage { stage: name.into(), output: None },
            }),
            None if s.is_empty() => Err(serde::de::Error::custom("an input is empty")),
            None => Ok(Input::Location(s)),
        }
    }
}

/// Where the model a stage applies comes from (`model = "..."`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `stage:NAME`: the model another estimator stage of this pipeline
    /// fits in the same run.
    Stage(String),
    /// `sha256:HEX`: a model in the registry under the store
    /// (`<store>/_models/HEX/`), by the SHA-256 of its bytes.
    Registry(String),
    /// `pipeline:NAME/STAGE`: the model of the latest committed run of
    /// stage `STAGE` of pipeline `NAME`, at its default output
    /// `<store>/NAME/STAGE`.
    Pipeline {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name in that pipeline.
        stage: String,
    },
    /// The location of a committed estimator output (a path or URL, e.g.
    /// `s3://lake/data/diabetes/fit`): its latest commit's model.
    Location(String),
}

/// What `model` may be, for error messages.
const MODEL_FORMS: &str = "`model` is `stage:NAME` (a stage of this pipeline), `sha256:HEX` (a model in the registry), `pipeline:NAME/STAGE` (the latest committed run of another pipeline's stage) or the location of a committed estimator output (a path or URL)";

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Stage(name) => write!(f, "stage:{name}"),
            ModelSource::Registry(hex) => write!(f, "sha256:{hex}"),
            ModelSource::Pipeline { pipeline, stage } => write!(f, "pipeline:{pipeline}/{stage}"),
            ModelSource::Location(l) => f.write_str(l),
        }
    }
}

impl<'de> Deserialize<'de> for ModelSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = |what: &str| serde::de::Error::custom(format!("`model = {s:?}`: {what}; {MODEL_FORMS}"));
        if let Some(name) = s.strip_prefix("stage:") {
            if let Some((stage, _)) = name.split_once('.') {
                return Err(bad(&format!(
                    "a model comes from the stage that fits it, not from one of its outputs: `stage:{stage}`"
                )));
            }
            return Ok(ModelSource::Stage(name.to_string()));
        }
        if let Some(hex) = s.strip_prefix("sha256:") {
            if !is_sha256(hex) {
                return Err(bad("a registry model is `sha256:` and 64 lowercase hex digits"));
            }
            return Ok(ModelSource::Registry(hex.to_string()));
        }
        if let Some(rest) = s.strip_prefix("pipeline:") {
            return match rest.split_once('/') {
                Some((pipeline, stage)) if valid_name(pipeline) && valid_name(stage) => {
                    Ok(ModelSource::Pipeline { pipeline: pipeline.into(), stage: stage.into() })
                }
                _ => Err(bad("name another pipeline's stage as `pipeline:NAME/STAGE` (letters, digits, '-' or '_')")),
            };
        }
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        // `word:` that is not a URL scheme (`s3://`) is a misspelt form,
        // not a relative path anyone means.
        if let Some((prefix, rest)) = s.split_once(':')
            && prefix.len() > 1
            && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !rest.starts_with("//")
        {
            return Err(bad(&format!("`{prefix}:` is not a form wasmpipe knows")));
        }
        Ok(ModelSource::Location(s))
    }
}

/// 64 lowercase hex digits.
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// Comma-separated values with a header row.
    Csv,
    /// JSON Lines: one JSON object per line.
    #[serde(alias = "ndjson", alias = "json")]
    Jsonl,
}

/// The type of a column declared in a stage's `schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum ColumnType {
    /// `true`/`false` (also `t`/`f`, `yes`/`no`, `1`/`0`).
    #[serde(rename = "boolean", alias = "bool")]
    Boolean,
    /// Signed 32-bit integer.
    #[serde(rename = "int32")]
    Int32,
    /// Signed 64-bit integer.
    #[serde(rename = "int64")]
    Int64,
    /// Single-precision float.
    #[serde(rename = "float32")]
    Float32,
    /// Double-precision float.
    #[serde(rename = "float64", alias = "double")]
    Float64,
    /// UTF-8 text.
    #[serde(rename = "utf8", alias = "string")]
    Utf8,
    /// ISO 8601 date-time (`2024-05-01T12:30:00`, optionally with a zone),
    /// stored as microseconds since the Unix epoch, UTC.
    #[serde(rename = "timestamp")]
    Timestamp,
}

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or not the manifest schema.
    #[error("{0}")]
    Syntax(String),
    /// Valid syntax, but the pipeline does not make sense.
    #[error("{0}")]
    Invalid(String),
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Manifest {
    /// Read and parse a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
        Manifest::parse(&text).map_err(|e| match e {
            ManifestError::Syntax(m) => ManifestError::Syntax(format!("{}: {m}", path.display())),
            ManifestError::Invalid(m) => ManifestError::Invalid(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parse and validate manifest text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        // Check the version before the schema, so that a newer file gets
        // a version message rather than a confusing unknown-key one.
        if let Ok(table) = text.parse::<toml::Table>() {
            match table.get("version") {
                None => {
                    return Err(ManifestError::Invalid(format!(
                        "missing `version`: add `version = {VERSION}` at the top"
                    )));
                }
                Some(toml::Value::Integer(v)) if *v != VERSION as i64 => {
                    return Err(ManifestError::Invalid(format!(
                        "manifest version {v} is not supported: this wasmpipe reads version {VERSION}"
                    )));
                }
                _ => {}
            }
        }
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string().trim_end().to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |m: String| Err(ManifestError::Invalid(m));
        if !valid_name(&self.name) {
            return invalid(format!("pipeline name {:?} must be letters, digits, '-' or '_'", self.name));
        }
        if self.name.starts_with('_') {
            return invalid(format!(
                "pipeline name {:?} starts with '_', which is reserved for the store's own directories (the model registry at <store>/{REGISTRY_DIR}, plans at <store>/_plans)\n  hint: name the pipeline without the leading '_'",
                self.name
            ));
        }
        if self.stages.is_empty() {
            return invalid("the pipeline has no stages: add a [stage.NAME] table".into());
        }
        check_settings("[defaults]", &self.defaults)?;
        for (scheme, options) in &self.storage {
            if !["s3", "gs", "az"].contains(&scheme.as_str()) {
                return invalid(format!("[storage.{scheme}]: unknown store; options are for s3, gs or az"));
            }
            for key in options.keys() {
                let k = key.to_ascii_lowercase();
                if ["secret", "access_key", "token", "password", "account_key", "sas"].iter().any(|c| k.contains(c)) {
                    return invalid(format!(
                        "[storage.{scheme}] {key}: credentials do not belong in the manifest; set them in the environment (e.g. AWS_SECRET_ACCESS_KEY)"
                    ));
                }
            }
        }
        for (name, stage) in &self.stages {
            if !valid_name(name) {
                return invalid(format!("stage name {name:?} must be letters, digits, '-' or '_'"));
            }
            if stage.inputs.is_empty() {
                return invalid(format!("stage {name:?} has no inputs: set `inputs = [...]`"));
            }
            if let Some(ModelSource::Pipeline { pipeline, stage: fitted }) = &stage.model
                && pipeline == &self.name
                && self.stages.contains_key(fitted)
            {
                return invalid(format!(
                    "stage {name:?} applies `pipeline:{pipeline}/{fitted}`, a stage of this pipeline that this run fits again; use `model = \"stage:{fitted}\"`"
                ));
            }
            for up in self.upstream(stage) {
                if up == name {
                    return invalid(format!("stage {name:?} reads its own output"));
                }
                if !self.stages.contains_key(up) {
                    let known: Vec<&str> = self.stages.keys().map(String::as_str).collect();
                    return invalid(format!(
                        "stage {name:?} reads `stage:{up}`, but there is no stage {up:?} (stages: {})",
                        known.join(", ")
                    ));
                }
            }
            if let Some(schema) = &stage.schema
                && schema.is_empty()
            {
                return invalid(format!("stage {name:?} declares an empty schema: remove `schema` or list columns"));
            }
            if let Some(cols) = &stage.columns
                && cols.is_empty()
            {
                return invalid(format!("stage {name:?} selects no columns: remove `columns` or list some"));
            }
            check_outputs(name, stage)?;
            for input in &stage.inputs {
                let Input::Stage { stage: up, output: Some(output) } = input else { continue };
                let Some(upstream) = self.stages.get(up) else { continue };
                if !upstream.outputs.contains(output) {
                    return invalid(match upstream.outputs.len() {
                        0 => format!(
                            "stage {name:?} reads `{input}`, but stage {up:?} has no named outputs\n  hint: read `stage:{up}`, or give stage {up:?} `outputs = [...]` and `route = \"COLUMN\"`"
                        ),
                        _ => format!(
                            "stage {name:?} reads `{input}`, but stage {up:?} has no output {output:?} (its outputs: {})",
                            upstream.outputs.join(", ")
                        ),
                    });
                }
            }
            check_settings(&format!("[stage.{name}.limits]"), &stage.limits)?;
        }
        self.check_acyclic()?;
        let mut outputs = BTreeSet::new();
        for (name, stage) in &self.stages {
            if let Some(out) = &stage.output
                && !outputs.insert(out.trim_end_matches('/'))
            {
                return invalid(format!("stage {name:?} writes to {out:?}, which another stage also writes"));
            }
        }
        Ok(())
    }

    fn check_acyclic(&self) -> Result<(), ManifestError> {
        if self.order().len() == self.stages.len() {
            return Ok(());
        }
        let placed: BTreeSet<&str> = self.order().into_iter().collect();
        let stuck: Vec<&str> = self.stages.keys().map(String::as_str).filter(|s| !placed.contains(s)).collect();
        Err(ManifestError::Invalid(format!("stages {} depend on each other in a cycle", stuck.join(", "))))
    }

    /// Stage names in an order where every stage comes after the stages it
    /// reads; among ready stages, the order written. (Stages in a cycle are
    /// left out; a parsed manifest has none.)
    pub fn order(&self) -> Vec<&str> {
        let mut done: Vec<&str> = Vec::new();
        loop {
            let next = self.stages.iter().find(|(name, stage)| {
                !done.contains(&name.as_str()) && self.upstream(stage).all(|up| done.contains(&up))
            });
            match next {
                Some((name, _)) => done.push(name),
                None => return done,
            }
        }
    }

    /// Names of the stages `stage` reads from.
    /// (Its inputs' and its model's.)
    pub fn upstream<'a>(&'a self, stage: &'a Stage) -> impl Iterator<Item = &'a str> + 'a {
        let inputs = stage.inputs.iter().filter_map(|i| match i {
            Input::Stage { stage, .. } => Some(stage.as_str()),
            Input::Location(_) => None,
        });
        let model = stage.model.iter().filter_map(|m| match m {
            ModelSource::Stage(s) => Some(s.as_str()),
            _ => None,
        });
        inputs.chain(model)
    }
}

/// A stage's named outputs: names, each once, with the column that routes
/// rows to them; not on a stage that writes no rows.
fn check_outputs(name: &str, stage: &Stage) -> Result<(), ManifestError> {
    let invalid = |m: String| Err(ManifestError::Invalid(m));
    match (&stage.route, stage.outputs.is_empty()) {
        (None, true) => return Ok(()),
        (Some(_), true) => {
            return invalid(format!(
                "stage {name:?} sets `route` but no `outputs`\n  hint: name the outputs its route column routes rows to, e.g. outputs = [\"train\", \"test\"]"
            ));
        }
        (None, false) => {
            return invalid(format!(
                "stage {name:?} names `outputs` but no `route`, the column that says which output each row belongs to\n  hint: e.g. route = \"split\" for the split stage"
            ));
        }
        (Some(route), false) if route.is_empty() => return invalid(format!("stage {name:?}: `route` is empty")),
        (Some(_), false) => {}
    }
    let mut seen = BTreeSet::new();
    for output in &stage.outputs {
        if !valid_name(output) {
            return invalid(format!("stage {name:?}: output name {output:?} must be letters, digits, '-' or '_'"));
        }
        if !seen.insert(output) {
            return invalid(format!("stage {name:?} names output {output:?} twice"));
        }
    }
    if !stage.emit_rows {
        return invalid(format!(
            "stage {name:?} has named outputs but `emit_rows = false`: it writes no rows to route"
        ));
    }
    Ok(())
}

fn check_settings(place: &str, s: &Settings) -> Result<(), ManifestError> {
    let bad = |key: &str, why: &str| Err(ManifestError::Invalid(format!("{place} {key} {why}")));
    if s.parallelism == Some(0) {
        return bad("parallelism", "must be at least 1");
    }
    if let Some(m) = s.memory_mib
        && !(1..=defaults::MAX_MEMORY_MIB).contains(&m)
    {
        return bad(
            "memory_mib",
            "must be between 1 and 4096: a wasm32 instance addresses at most 4 GiB (keep more in the host: `host_memory_mib`)",
        );
    }
    if let Some(m) = s.host_memory_mib
        && !(1..=defaults::MAX_HOST_MEMORY_MIB).contains(&m)
    {
        return bad("host_memory_mib", "must be between 1 and 65536 (64 GiB)");
    }
    for (key, value) in [("timeout_s", s.timeout_s), ("wall_timeout_s", s.wall_timeout_s)] {
        if let Some(t) = value
            && !(t > 0.0 && t <= 86_400.0)
        {
            return bad(key, "must be more than 0 and at most 86400 (one day)");
        }
    }
    if s.batch_rows == Some(0) {
        return bad("batch_rows", "must be at least 1");
    }
    if s.row_group_rows == Some(0) {
        return bad("row_group_rows", "must be at least 1");
    }
    if s.fit_task_mib.is_some_and(|m| m > defaults::MAX_HOST_MEMORY_MIB) {
        return bad("fit_task_mib", "must be at most 65536 (64 GiB)");
    }
    if s.max_passes == Some(0) {
        return bad("max_passes", "must be at least 1");
    }
    Ok(())
}

/// Convert a stage's TOML config to the JSON object handed to the guest.
/// TOML dates and times become RFC 3339 strings.
pub fn config_json(config: &toml::Table) -> String {
    fn convert(v: &toml::Value) -> serde_json::Value {
        match v {
            toml::Value::String(s) => serde_json::Value::String(s.clone()),
            toml::Value::Integer(i) => serde_json::Value::from(*i),
            toml::Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
            toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
            toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(convert).collect()),
            toml::Value::Table(t) => {
                serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), convert(v))).collect())
            }
        }
    }
    convert(&toml::Value::Table(config.clone())).to_string()
}

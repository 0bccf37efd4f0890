//! Deploying: a pipeline published to an object store, runnable from
//! there on any machine that can reach it (the layout is in
//! `wasmpipe_storage::deployments`). Deploying uploads only what the root
//! lacks, and writes a new version only when the pinned manifest differs
//! from the latest one.

use std::path::Path;

use wasmpipe_manifest::{ComponentSource, Input, Manifest};
use wasmpipe_storage::{Location, Storage, StorageError};

use wasmpipe_storage::deployments::{self, DeployedPipeline, component_key, manifest_key, plan_key};

use crate::plan::LockedPipeline;
use crate::stage::content_sha256;
use crate::{Executor, RunError};

/// What `deploy` did.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Pipeline name.
    pub name: String,
    /// Its version number (1, 2, ...).
    pub version: u32,
    /// URL of the pinned manifest.
    pub manifest_url: String,
    /// Objects uploaded, by URL.
    pub uploaded: Vec<String>,
    /// True when the latest version already held this exact pipeline.
    pub unchanged: bool,
}

fn err(what: &str, source: StorageError) -> RunError {
    RunError::Deploy { what: what.into(), source: Box::new(source) }
}

fn invalid(what: &str, reason: String) -> RunError {
    RunError::Deploy { what: what.into(), source: Box::new(StorageError::InvalidLocation { url: what.into(), reason }) }
}

impl Executor {
    /// Publish the pipeline of the manifest at `manifest_path` under the
    /// deployment root `to`.
    pub fn deploy(&self, manifest_path: &Path, to: &str) -> Result<Deployment, RunError> {
        let text = std::fs::read_to_string(manifest_path).map_err(|source| {
            RunError::Manifest(wasmpipe_manifest::ManifestError::Read { path: manifest_path.into(), source })
        })?;
        let manifest = Manifest::parse(&text).map_err(RunError::Manifest)?;
        let dir = manifest_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut table: toml::Table = text.parse().expect("parsed above");
        let storage = Storage::new(dir).with_options(manifest.storage.clone());
        let root = storage.resolve(to).map_err(|e| err(to, e))?;
        // Components already pinned must be in the root they are deployed to.
        let pinned_from = Storage::at_url(root.url()).with_options(manifest.storage.clone());
        let mut uploaded = Vec::new();

        // Components, built and checked to load, by content.
        let mut toolchain = None;
        for (name, stage) in &manifest.stages {
            let from = if matches!(stage.component, ComponentSource::Pinned(_)) { &pinned_from } else { &storage };
            let (bytes, origin) =
                crate::plan::component_bytes(self, from, Some(dir), name, &stage.component, &mut toolchain)?;
            let component = wasmpipe_runtime::to_component(&bytes, &origin)
                .map_err(|source| RunError::Load { stage: name.clone(), source })?;
            self.runtime.load(&component, &origin).map_err(|source| RunError::Load { stage: name.clone(), source })?;
            let hex = content_sha256(&component);
            self.upload(&root.child(&component_key(&hex)), component, &mut uploaded)?;
            set_stage(&mut table, name, "component", toml::Value::String(format!("sha256:{hex}")));
        }

        // Local input files travel with the deployment, by content.
        for (name, stage) in &manifest.stages {
            let mut inputs = Vec::new();
            for input in &stage.inputs {
                inputs.push(toml::Value::String(match input {
                    up @ Input::Stage { .. } => up.to_string(),
                    Input::Location(l) if is_remote(l) => l.clone(),
                    Input::Location(l) => {
                        let path = match l.strip_prefix("file://") {
                            Some(abs) => abs.into(),
                            None => dir.join(l),
                        };
                        let bytes = std::fs::read(&path).map_err(|e| {
                            invalid(l, format!(
                                "stage {name:?}: cannot read {} ({e}); deploy uploads local input files, so a directory or missing file cannot go: put it in the store and name it by URL",
                                path.display()
                            ))
                        })?;
                        let file = path.file_name().map_or("input".into(), |f| f.to_string_lossy().into_owned());
                        let rel = format!("inputs/{}/{file}", content_sha256(&bytes));
                        self.upload(&root.child(&rel), bytes, &mut uploaded)?;
                        rel
                    }
                }));
            }
            set_stage(&mut table, name, "inputs", toml::Value::Array(inputs));
        }

        // The pinned manifest, as a new version unless nothing changed.
        let pinned = format!(
            "# Deployed by wasmpipe {} from {}; components and inputs are pinned by SHA-256.\n{}",
            env!("CARGO_PKG_VERSION"),
            manifest_path.file_name().map_or("wasmpipe.toml".into(), |f| f.to_string_lossy()),
            toml::to_string(&table).expect("a TOML table serializes")
        );
        Manifest::parse(&pinned).map_err(RunError::Manifest)?;
        let versions = self.versions(&root, &manifest.name)?;
        if let Some(&latest) = versions.last() {
            let at = root.child(&manifest_key(&manifest.name, latest));
            if let Some((bytes, _)) = self.io.block_on(at.get_opt()).map_err(|e| err(at.url(), e))?
                && bytes == pinned.as_bytes()
            {
                self.store_plan(&root, &manifest.name, latest, &pinned, &mut uploaded)?;
                return Ok(Deployment {
                    name: manifest.name.clone(),
                    version: latest,
                    manifest_url: at.url().into(),
                    uploaded,
                    unchanged: true,
                });
            }
        }
        let version = versions.last().map_or(1, |v| v + 1);
        let at = root.child(&manifest_key(&manifest.name, version));
        if !self.io.block_on(at.put_if(pinned.clone(), None)).map_err(|e| err(at.url(), e))? {
            return Err(invalid(at.url(), "another deploy wrote this version at the same time; deploy again".into()));
        }
        uploaded.push(at.url().into());
        self.store_plan(&root, &manifest.name, version, &pinned, &mut uploaded)?;
        Ok(Deployment { name: manifest.name, version, manifest_url: at.url().into(), uploaded, unchanged: false })
    }

    /// Resolve the pinned manifest `pinned` (version `version`) as a run
    /// from `root` would, and keep its plan beside it unless it is there.
    fn store_plan(
        &self,
        root: &Location,
        name: &str,
        version: u32,
        pinned: &str,
        uploaded: &mut Vec<String>,
    ) -> Result<(), RunError> {
        let at = root.child(&plan_key(name, version));
        if self.io.block_on(at.get_opt()).map_err(|e| err(at.url(), e))?.is_some() {
            return Ok(());
        }
        let manifest = Manifest::parse(pinned).map_err(RunError::Manifest)?;
        let plan = self.resolve(&manifest, &Storage::at_url(root.url()), None)?;
        self.io.block_on(at.put(plan.to_json())).map_err(|e| err(at.url(), e))?;
        uploaded.push(at.url().into());
        Ok(())
    }

    /// The plan of `name` at `version` (default: the latest) deployed
    /// under `root`, with its version: the plan stored beside the pinned
    /// manifest, or, for a deployment made before plans were stored, the
    /// pinned manifest resolved now.
    pub fn deployed_plan(
        &self,
        root: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<(LockedPipeline, u32), RunError> {
        let (_, manifest, version) = self.deployed_manifest(root, name, version)?;
        let root_at = Storage::new(".").resolve(root).map_err(|e| err(root, e))?;
        let at = root_at.child(&plan_key(name, version));
        let plan = match self.io.block_on(at.get_opt()).map_err(|e| err(at.url(), e))? {
            Some((bytes, _)) => LockedPipeline::from_json(&bytes, at.url())?,
            None => self.resolve(&manifest, &Storage::at_url(root_at.url()), None)?,
        };
        if plan.pipeline != manifest.name || plan.root.as_deref() != Some(root_at.url().trim_end_matches('/')) {
            return Err(invalid(
                at.url(),
                format!(
                    "the plan is for pipeline {:?} under {:?}, not for {name:?} under {}; deploy again",
                    plan.pipeline,
                    plan.root,
                    root_at.url()
                ),
            ));
        }
        Ok((plan, version))
    }

    /// Upload `bytes` to `at` unless an object of that size is there (the
    /// key is content-addressed). True when uploaded.
    fn upload(&self, at: &Location, bytes: Vec<u8>, uploaded: &mut Vec<String>) -> Result<bool, RunError> {
        use object_store::ObjectStoreExt;
        match self.io.block_on(at.store().head(at.path())) {
            Ok(meta) if meta.size == bytes.len() as u64 => return Ok(false),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(err(at.url(), at.error(e))),
        }
        self.io.block_on(at.put(bytes)).map_err(|e| err(at.url(), e))?;
        uploaded.push(at.url().into());
        Ok(true)
    }

    fn versions(&self, root: &Location, name: &str) -> Result<Vec<u32>, RunError> {
        self.io.block_on(deployments::versions(root, name)).map_err(|e| err(root.url(), e))
    }

    /// The pipelines deployed under `root`, with their versions.
    pub fn deployments(&self, root: &str) -> Result<Vec<DeployedPipeline>, RunError> {
        let root_at = deployments::root(root).map_err(|e| err(root, e))?;
        self.io.block_on(deployments::list(&root_at)).map_err(|e| err(root, e))
    }

    /// The pinned manifest of `name` at `version` (default: the latest)
    /// under `root`: its text, parsed form and version.
    pub fn deployed_manifest(
        &self,
        root: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<(String, Manifest, u32), RunError> {
        let root_at = deployments::root(root).map_err(|e| err(root, e))?;
        let (text, version) =
            self.io.block_on(deployments::manifest(&root_at, name, version)).map_err(|e| err(root, e))?;
        let manifest = Manifest::parse(&text).map_err(RunError::Manifest)?;
        Ok((text, manifest, version))
    }
}

fn is_remote(location: &str) -> bool {
    location.split_once("://").is_some_and(|(scheme, _)| scheme != "file")
}

fn set_stage(table: &mut toml::Table, stage: &str, key: &str, value: toml::Value) {
    let stage = table
        .get_mut("stage")
        .and_then(|s| s.get_mut(stage))
        .and_then(toml::Value::as_table_mut)
        .expect("the manifest parsed, so the stage table exists");
    stage.insert(key.into(), value);
}

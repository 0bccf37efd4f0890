//! Deployments: pipelines published under a deployment root, runnable
//! from there on any machine that can reach it.
//!
//! ```text
//! components/SHA256.wasm              every stage component, by content
//! inputs/SHA256/NAME                  local input files the manifest named
//! deployments/PIPELINE/vN.toml        the manifest, pinned to those hashes
//! deployments/PIPELINE/vN.plan.json   its resolved plan: what `run --from` runs
//! data/PIPELINE/STAGE/                outputs of runs from the deployment
//! ```
//!
//! This module reads and names them; `wasmpipe deploy` (the executor)
//! writes them.

use futures::TryStreamExt;

use crate::{Location, Storage, StorageError};

/// A pipeline's deployed versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployedPipeline {
    /// Pipeline name.
    pub name: String,
    /// Version numbers, ascending.
    pub versions: Vec<u32>,
}

/// Where a pinned component lives, relative to the deployment root.
pub fn component_key(sha256: &str) -> String {
    format!("components/{sha256}.wasm")
}

/// Where version `version` of pipeline `name` lives under the root.
pub fn manifest_key(name: &str, version: u32) -> String {
    format!("deployments/{name}/v{version}.toml")
}

/// Where the plan of version `version` of pipeline `name` lives under the
/// root.
pub fn plan_key(name: &str, version: u32) -> String {
    format!("deployments/{name}/v{version}.plan.json")
}

/// The deployment root at `root` (a URL or an absolute path).
pub fn root(root: &str) -> Result<Location, StorageError> {
    Storage::new(".").resolve(root)
}

/// The versions of pipeline `name` deployed under `root`, ascending.
pub async fn versions(root: &Location, name: &str) -> Result<Vec<u32>, StorageError> {
    let dir = root.child(&format!("deployments/{name}"));
    let listed: Vec<_> = dir.store().list(Some(dir.path())).try_collect().await.map_err(|e| dir.error(e))?;
    let mut versions: Vec<u32> = listed
        .iter()
        .filter_map(|m| m.location.filename()?.strip_prefix('v')?.strip_suffix(".toml")?.parse().ok())
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

/// The pipelines deployed under `root`, by name, with their versions.
pub async fn list(root: &Location) -> Result<Vec<DeployedPipeline>, StorageError> {
    let dir = root.child("deployments");
    let listed: Vec<_> = dir.store().list(Some(dir.path())).try_collect().await.map_err(|e| dir.error(e))?;
    let mut names: Vec<String> = listed
        .iter()
        .filter_map(|m| m.location.prefix_match(dir.path())?.next().map(|p| p.as_ref().to_string()))
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(DeployedPipeline { versions: versions(root, &name).await?, name });
    }
    Ok(out)
}

/// The text of pipeline `name`'s pinned manifest at `version` (default:
/// the latest) under `root`, with the version.
pub async fn manifest(root: &Location, name: &str, version: Option<u32>) -> Result<(String, u32), StorageError> {
    let invalid = |url: &str, reason: String| StorageError::InvalidLocation { url: url.into(), reason };
    let versions = versions(root, name).await?;
    let version = match version {
        Some(v) => v,
        None => *versions.last().ok_or_else(|| {
            invalid(root.url(), format!("no pipeline {name:?} is deployed here (deploy it with `wasmpipe deploy`)"))
        })?,
    };
    let at = root.child(&manifest_key(name, version));
    let (bytes, _) = at
        .get_opt()
        .await?
        .ok_or_else(|| invalid(at.url(), format!("{name} has no version {version} (versions: {versions:?})")))?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), version))
}

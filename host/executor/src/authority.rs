//! What a run may read and write.
//!
//! A local run acts for the user who started it: it reads what the
//! manifest names, and writes under the store or beside the manifest. A
//! run from a deployment (`wasmpipe run NAME --from ROOT`) acts for
//! whoever wrote to that root, so it gets the authority of the root and
//! nothing more: pinned components only, inputs inside the root (deployed
//! inputs checked against the hash in their name as they are read),
//! outputs inside the store. Anything beyond needs the runner's say-so:
//! `--allow-input PREFIX`, `--allow-output PREFIX`.

use wasmpipe_storage::{Location, Storage, StorageError};

use crate::RunError;

/// The prefixes a run may read from and write to.
pub(crate) struct Authority {
    /// The deployment root of a run `--from` one.
    deployed_root: Option<String>,
    /// Where outputs may go: the store, the manifest's directory (local
    /// runs), and what the runner allowed.
    outputs: Vec<String>,
    /// Where a deployed run may read besides its root.
    inputs: Vec<String>,
}

/// `url` is `prefix` or lies below it.
fn within(url: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    url == prefix || url.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

impl Authority {
    /// The authority of a run resolved by `storage` into `store`: local
    /// when `local_dir` is the manifest's directory, deployed otherwise.
    pub(crate) fn new(
        storage: &Storage,
        store: &str,
        local_dir: Option<&std::path::Path>,
        allow_input: &[String],
        allow_output: &[String],
    ) -> Result<Self, RunError> {
        let url = |l: &str| -> Result<String, RunError> {
            let at = Storage::new(".").resolve(l).map_err(|source| RunError::Storage { stage: "-".into(), source })?;
            Ok(at.url().trim_end_matches('/').to_string())
        };
        let mut outputs = vec![url(store)?];
        let deployed_root = match local_dir {
            Some(dir) => {
                outputs.push(url(&dir.display().to_string())?);
                None
            }
            None => storage.base_url().map(|u| u.trim_end_matches('/').to_string()),
        };
        for prefix in allow_output {
            outputs.push(url(prefix)?);
        }
        let inputs = allow_input.iter().map(|p| url(p)).collect::<Result<_, _>>()?;
        Ok(Authority { deployed_root, outputs, inputs })
    }

    /// The authority of a run of a resolved plan: deployed under
    /// `plan_root` (its inputs confined to it), or a plan of the runner's
    /// own; outputs under `store` and what the runner allowed.
    pub(crate) fn of_plan(
        plan_root: Option<&str>,
        store: &str,
        allow_input: &[String],
        allow_output: &[String],
    ) -> Result<Self, RunError> {
        let mut authority = Authority::new(&Storage::new("."), store, None, allow_input, allow_output)?;
        authority.deployed_root = plan_root.map(|r| r.trim_end_matches('/').to_string());
        Ok(authority)
    }

    /// The deployment root of a deployed run.
    pub(crate) fn deployed_root(&self) -> Option<&str> {
        self.deployed_root.as_deref()
    }

    /// Refuse an output outside the run's authority.
    pub(crate) fn check_output(&self, stage: &str, output: &Location) -> Result<(), RunError> {
        if self.outputs.iter().any(|p| within(output.url(), p)) {
            return Ok(());
        }
        Err(RunError::Confined {
            stage: stage.into(),
            what: "write to",
            url: output.url().into(),
            allowed: self.outputs.clone(),
            flag: "--allow-output",
        })
    }

    /// Refuse an input outside a deployed run's authority (a local run may
    /// read what its manifest names).
    pub(crate) fn check_input(&self, stage: &str, input: &Location) -> Result<(), RunError> {
        let Some(root) = &self.deployed_root else {
            return Ok(());
        };
        if within(input.url(), root) || self.inputs.iter().any(|p| within(input.url(), p)) {
            return Ok(());
        }
        let mut allowed = vec![root.clone()];
        allowed.extend(self.inputs.iter().cloned());
        Err(RunError::Confined {
            stage: stage.into(),
            what: "read",
            url: input.url().into(),
            allowed,
            flag: "--allow-input",
        })
    }
}

/// For a run from the deployment `root`, check a file under its
/// `inputs/SHA256/` against the hash in its name (streamed through the
/// hash once, never held whole).
pub(crate) async fn verify_deployed_input(root: Option<&str>, file: &Location) -> Result<(), StorageError> {
    let Some(root) = root else {
        return Ok(());
    };
    let Some(rest) = file.url().strip_prefix(&format!("{root}/inputs/")) else {
        return Ok(());
    };
    let Some((hex, _)) = rest.split_once('/') else {
        return Ok(());
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    file.verify_streaming(hex).await
}

#[cfg(test)]
mod tests {
    use super::within;

    #[test]
    fn within_respects_segment_boundaries() {
        assert!(within("s3://b/root/data/x", "s3://b/root"));
        assert!(within("s3://b/root", "s3://b/root/"));
        assert!(!within("s3://b/rootkit/x", "s3://b/root"));
        assert!(!within("file:///etc/passwd", "s3://b/root"));
        assert!(!within("file:///home/u/victim", "file:///home/u/project"));
    }
}

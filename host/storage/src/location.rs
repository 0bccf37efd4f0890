//! Resolving manifest locations to object stores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;

use crate::StorageError;

/// A place in an object store: an object, or a prefix of objects.
#[derive(Clone, Debug)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    url: String,
}

impl Location {
    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The path within the store.
    pub fn path(&self) -> &ObjectPath {
        &self.path
    }

    /// The location as a URL, for messages and records.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object or prefix `name` below this one.
    pub fn child(&self, name: &str) -> Location {
        Location {
            store: self.store.clone(),
            path: self.path.clone().join(name),
            url: format!("{}/{name}", self.url.trim_end_matches('/')),
        }
    }

    /// The same store at another path (e.g. an object found by listing).
    pub fn at(&self, path: ObjectPath) -> Location {
        let url = match self.url.split_once("://") {
            Some((scheme, rest)) => {
                let authority = rest.split('/').next().unwrap_or("");
                format!("{scheme}://{authority}/{path}")
            }
            None => path.to_string(),
        };
        Location { store: self.store.clone(), path, url }
    }

    /// The last segment of the path.
    pub fn name(&self) -> String {
        self.path.filename().unwrap_or("").to_string()
    }
}

/// Resolves locations; relative paths are relative to `base_dir` (the
/// manifest's directory). Stores are shared per scheme and authority.
pub struct Storage {
    base_dir: PathBuf,
    local: Arc<dyn ObjectStore>,
    memory: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Storage {
    /// Resolve relative paths against `base_dir`.
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Storage {
            base_dir: base_dir.into(),
            local: Arc::new(LocalFileSystem::new()),
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// The directory relative paths are resolved against.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Resolve a manifest location: `file:///abs/path`, `memory://name/path`
    /// (an in-process store, for tests), or a local path.
    pub fn resolve(&self, location: &str) -> Result<Location, StorageError> {
        let invalid = |reason: String| StorageError::InvalidLocation { url: location.to_string(), reason };
        if let Some((scheme, rest)) = location.split_once("://") {
            return match scheme {
                "file" => {
                    let url = url::Url::parse(location).map_err(|e| invalid(e.to_string()))?;
                    let path = url.to_file_path().map_err(|_| invalid("not an absolute file path".into()))?;
                    self.local_location(&path, location)
                }
                "memory" => {
                    let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
                    let store = self
                        .memory
                        .lock()
                        .expect("memory store registry")
                        .entry(name.to_string())
                        .or_insert_with(|| Arc::new(InMemory::new()))
                        .clone();
                    let path = ObjectPath::parse(path.trim_end_matches('/')).map_err(|e| invalid(e.to_string()))?;
                    Ok(Location { store, url: format!("memory://{name}/{path}"), path })
                }
                other => Err(invalid(format!(
                    "the {other}:// scheme is not supported yet; use a local path, file:// or memory://"
                ))),
            };
        }
        let path = Path::new(location);
        let absolute = if path.is_absolute() { path.to_path_buf() } else { self.base_dir.join(path) };
        self.local_location(&absolute, location)
    }

    fn local_location(&self, path: &Path, original: &str) -> Result<Location, StorageError> {
        let normalized = normalize(path);
        let object_path = ObjectPath::from_absolute_path(&normalized)
            .map_err(|e| StorageError::InvalidLocation { url: original.to_string(), reason: e.to_string() })?;
        Ok(Location { store: self.local.clone(), url: format!("file:///{object_path}"), path: object_path })
    }
}

/// Remove `.` and `..` lexically: the object may not exist yet, so the
/// path cannot be canonicalized.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
